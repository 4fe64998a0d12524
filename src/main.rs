//! The `gatehouse` binary: parse arguments and hand over to the library. No logic lives here.

fn main() -> std::process::ExitCode {
    gatehouse::cli::main()
}
