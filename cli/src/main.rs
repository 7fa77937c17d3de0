//! `cmdx`: the one binary. Thin: parses flags, installs tracing, and calls the libraries.

use clap::{Parser, Subcommand};

mod logging;
mod serve;

/// cmdx: run commands on a cluster of sandboxed workers.
#[derive(Parser)]
#[command(name = "cmdx", version, about)]
struct Cli {
    /// More log detail (-v info, -vv debug, -vvv trace); RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    /// Log format.
    #[arg(long, global = true, value_parser = ["text", "json"], default_value = "text")]
    log_format: String,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the hub (HTTP + WebSocket server with its sled store).
    Hub(serve::HubArgs),
    /// Run a hub, local sandboxed agents and the dashboard in one process (for development).
    Dev(serve::DevArgs),
    /// Run a worker agent that takes jobs from a hub and runs them sandboxed.
    Agent(serve::AgentArgs),
    // --- client commands (cli/src/client/) ---
    // --- end client commands ---
}

fn main() {
    let cli = Cli::parse();
    logging::install(cli.verbose, &cli.log_format);
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cmdx: cannot start the runtime: {e}");
            std::process::exit(125);
        }
    };
    let result = rt.block_on(async move {
        match cli.cmd {
            Cmd::Hub(args) => serve::run_hub(args).await.map(|()| 0),
            Cmd::Dev(args) => serve::run_dev(args).await.map(|()| 0),
            Cmd::Agent(args) => serve::run_agent(args).await,
            // --- client command dispatch ---
            // --- end client command dispatch ---
        }
    });
    match result {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("cmdx: {e:#}");
            std::process::exit(125);
        }
    }
}
