//! The command line: `gatehouse run`, `check-config`, `demo`. Parses arguments, loads the
//! configuration, starts the runtime, and turns every failure into a message and an exit code.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::config::{self, Config};
use crate::server::{self, Server};
use crate::telemetry;

/// An authentication gateway: a streaming reverse proxy that logs people and machines in before
/// they reach your app.
#[derive(Debug, Parser)]
#[command(name = "gatehouse", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the gateway with a configuration file.
    Run {
        /// The TOML configuration file.
        #[arg(long, short, env = "GATEHOUSE_CONFIG", value_name = "FILE")]
        config: PathBuf,
    },
    /// Validate a configuration file and print the effective configuration (secrets redacted).
    CheckConfig {
        #[arg(value_name = "FILE")]
        file: PathBuf,
    },
    /// Run the whole product on loopback: the gateway, a development OpenID provider and an
    /// echo upstream. For trying Gatehouse out; never for production.
    Demo {
        /// Where the gateway listens (loopback only).
        #[arg(long, default_value = "127.0.0.1:4180")]
        listen: SocketAddr,
    },
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::CheckConfig { file } => match config::load_file(&file) {
            Ok(config) => {
                println!("{}", config::render_effective(&config));
                eprintln!("{}: configuration is valid", file.display());
                ExitCode::SUCCESS
            }
            Err(err) => config_failed(&err),
        },
        Command::Run { config } => match config::load_file(&config) {
            Ok(config) => run_async(serve(config)),
            Err(err) => config_failed(&err),
        },
        Command::Demo { listen } => run_async(async move {
            telemetry::init(&config::LogConfig::default());
            crate::demo::run(
                crate::demo::DemoOptions { listen },
                server::shutdown_signal(),
            )
            .await
            .map_err(|e| e.to_string())
        }),
    }
}

fn config_failed(err: &config::ConfigError) -> ExitCode {
    eprintln!(
        "gatehouse: the configuration has {} problem(s):",
        err.problems.len()
    );
    eprintln!("{err}");
    ExitCode::from(2)
}

async fn serve(config: Config) -> Result<(), String> {
    telemetry::init(&config.log);
    warn_insecure(&config);
    let server = Server::bind(config).await.map_err(|e| e.to_string())?;
    tracing::info!(address = %server.local_addr(), "gatehouse listening");
    if let Some(addr) = server.metrics_addr() {
        tracing::info!(address = %addr, "metrics at /metrics");
    }
    server.run(server::shutdown_signal()).await;
    tracing::info!("gatehouse stopped");
    Ok(())
}

/// Every `insecure_*` switch that is on gets a warning at start (house rule 5).
fn warn_insecure(config: &Config) {
    for upstream in &config.upstreams {
        if upstream.insecure_skip_verify {
            tracing::warn!(
                upstream = %upstream.name,
                "insecure_skip_verify is on: the upstream's TLS certificate is not checked"
            );
        }
    }
}

fn run_async(fut: impl std::future::Future<Output = Result<(), String>>) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("gatehouse: cannot start the runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(fut) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("gatehouse: {err}");
            ExitCode::FAILURE
        }
    }
}
