//! The `gatehouse` binary: parse arguments and hand over to the library. No logic lives here.

/// mimalloc's per-thread free lists suit the thread-per-core workers: every request allocates
/// and frees its header maps, buffers and channels on one thread (measured in benches/README.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    gatehouse::cli::main()
}
