//! `cmdx`: the one binary. Thin: parses flags, installs tracing, and calls the libraries.

use clap::{Parser, Subcommand};

mod client;
mod logging;
mod serve;

/// mimalloc instead of glibc's malloc: the hub allocates and frees small buffers on every
/// message from many threads, where glibc's arenas spent about a fifth of the hub's CPU
/// (`_int_malloc`, `malloc_consolidate`) in the dispatch load test.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
    /// Download an online backup of a running hub (admin).
    Backup(serve::BackupArgs),
    /// Write a new data folder from a backup archive.
    Restore(serve::RestoreArgs),
    // --- client commands (cli/src/client/) ---
    /// Sign in to a hub and remember it (and the session token) in the config file.
    Login(client::LoginArgs),
    /// Forget the session token.
    Logout(client::LogoutArgs),
    /// Run a command on the cluster (a folder or ZIP uploaded first) and stream its output.
    Submit(client::SubmitArgs),
    /// Print a job's output; -f follows it to the end.
    Logs(client::LogsArgs),
    /// List jobs.
    Jobs(client::JobsArgs),
    /// List workers.
    Workers(client::WorkersArgs),
    /// Cancel a job.
    Cancel(client::CancelArgs),
    /// List a job's artifacts, or download them (--out DIR unpacks, --zip FILE saves the ZIP).
    Artifacts(client::ArtifactsArgs),
    /// Mint tokens (admin).
    Token(client::TokenArgs),
    /// Manage users (admin).
    User(client::UserArgs),
    /// Print shell completions (bash, zsh, fish, …).
    Completions(client::CompletionsArgs),
    // --- end client commands ---
}

/// `cmdx agent --token T`: a job can read every process's command line through /proc, so the
/// token moves into the environment (readable only by the agent's own uid) and the agent
/// re-executes itself without it in argv.
fn hide_agent_token() {
    use std::os::unix::process::CommandExt;
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if args.get(1).is_none_or(|a| a != "agent") {
        return;
    }
    let mut kept = Vec::with_capacity(args.len());
    let mut token = None;
    let mut i = 1;
    while i < args.len() {
        let a = &args[i];
        if a == "--" {
            kept.extend(args[i..].iter().cloned());
            break;
        }
        if a == "--token" {
            token = args.get(i + 1).cloned();
            i += 2;
            continue;
        }
        if let Some(v) = a.to_str().and_then(|s| s.strip_prefix("--token=")) {
            token = Some(v.into());
            i += 1;
            continue;
        }
        kept.push(a.clone());
        i += 1;
    }
    let Some(token) = token else { return };
    let exe = match std::env::current_exe() {
        Ok(e) => e,
        Err(e) => {
            eprintln!("cmdx: cannot find my own executable to hide the token: {e}");
            std::process::exit(125);
        }
    };
    let err = std::process::Command::new(exe)
        .args(kept)
        .env("CMDX_AGENT_TOKEN", token)
        .exec();
    eprintln!("cmdx: re-executing without the token in argv failed: {err}");
    std::process::exit(125);
}

fn main() {
    hide_agent_token();
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
            Cmd::Backup(args) => serve::run_backup(args).await,
            Cmd::Restore(args) => serve::run_restore(args).await,
            // --- client command dispatch ---
            Cmd::Login(a) => client::run(cli.verbose, client::session::login(a)).await,
            Cmd::Logout(a) => client::run(cli.verbose, client::session::logout(a)).await,
            Cmd::Submit(a) => client::run(cli.verbose, client::submit::submit(a)).await,
            Cmd::Logs(a) => client::run(cli.verbose, client::submit::logs(a)).await,
            Cmd::Jobs(a) => client::run(cli.verbose, client::listing::jobs(a)).await,
            Cmd::Workers(a) => client::run(cli.verbose, client::listing::workers(a)).await,
            Cmd::Cancel(a) => client::run(cli.verbose, client::listing::cancel(a)).await,
            Cmd::Artifacts(a) => client::run(cli.verbose, client::artifacts::artifacts(a)).await,
            Cmd::Token(a) => client::run(cli.verbose, client::session::token(a)).await,
            Cmd::User(a) => client::run(cli.verbose, client::session::user(a)).await,
            Cmd::Completions(a) => client::completions::<Cli>(a),
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
