//! `cmdx`: the one binary. Thin: parses flags, installs tracing, and calls the libraries.

#![forbid(unsafe_code)]

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
    /// Copy a stopped sled hub's data folder into an empty PostgreSQL database (to grow into
    /// several hubs).
    Migrate(serve::MigrateArgs),
    // --- client commands (cli/src/client/) ---
    /// Sign in to a hub and remember it (and the session token) in the config file.
    Login(client::LoginArgs),
    /// Forget the session token.
    Logout(client::LogoutArgs),
    /// Run a command on the cluster (a folder or ZIP uploaded first) and stream its output.
    Submit(client::SubmitArgs),
    /// Submit a job again (same command, file, tags, env, timeout) and print the new id;
    /// --follow streams it as submit does.
    Rerun(client::RerunArgs),
    /// Print a job's output; -f follows it to the end.
    Logs(client::LogsArgs),
    /// List jobs.
    Jobs(client::JobsArgs),
    /// Show one job: `cmdx job show JOB` (--json for the whole document).
    Job(client::JobArgs),
    /// List workers.
    Workers(client::WorkersArgs),
    /// Cancel a job.
    Cancel(client::CancelArgs),
    /// List a job's artifacts, or download them (--out DIR unpacks, --zip FILE saves the ZIP).
    Artifacts(client::ArtifactsArgs),
    /// Mint, list and revoke worker tokens (admin).
    Token(client::TokenArgs),
    /// Manage users (admin).
    User(client::UserArgs),
    /// Print shell completions (bash, zsh, fish, …).
    Completions(client::CompletionsArgs),
    // --- end client commands ---
}

/// A token given as `--token T` (or `--token=T`) is visible to every process on the host through
/// `/proc/PID/cmdline`, and a job is such a process. So wherever the flag stands (after global
/// flags such as `-v` or `--log-format json` too), it moves into the environment variable the
/// subcommand reads (`CMDX_AGENT_TOKEN` for `cmdx agent`, `CMDX_TOKEN` for the client and backup
/// commands; the environment is readable only by the process's own uid) and the process
/// re-executes itself without it in argv. Arguments after `--` (a submitted command) are left as
/// they are. The documented way is the environment variable or `cmdx agent --token-file`.
fn hide_token_args() {
    use std::os::unix::process::CommandExt;
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let Some((kept, token)) = strip_token(&args) else {
        return;
    };
    let var = match subcommand(&args) {
        Some("agent") => "CMDX_AGENT_TOKEN",
        _ => "CMDX_TOKEN",
    };
    let exe = match std::env::current_exe() {
        Ok(e) => e,
        Err(e) => {
            eprintln!("cmdx: cannot find my own executable to hide the token: {e}");
            std::process::exit(125);
        }
    };
    let err = std::process::Command::new(exe)
        .args(&kept[1..])
        .env(var, token)
        .exec();
    eprintln!("cmdx: re-executing without the token in argv failed: {err}");
    std::process::exit(125);
}

/// The subcommand: the first argument that is not a global flag (`-v`, `-vv`, `--verbose`,
/// `--log-format X`, `--log-format=X`) or a token flag.
fn subcommand(args: &[std::ffi::OsString]) -> Option<&str> {
    let mut it = args.iter().skip(1).filter_map(|a| a.to_str());
    while let Some(a) = it.next() {
        match a {
            "--verbose" => {}
            "--log-format" | "--token" => {
                it.next();
            }
            _ if a.starts_with("--log-format=") || a.starts_with("--token=") => {}
            _ if a.len() > 1 && a.starts_with('-') && a[1..].bytes().all(|b| b == b'v') => {}
            _ => return Some(a),
        }
    }
    None
}

/// `args` without any `--token V` / `--token=V` before `--`, and the (last) token; `None` when
/// there is none.
fn strip_token(
    args: &[std::ffi::OsString],
) -> Option<(Vec<std::ffi::OsString>, std::ffi::OsString)> {
    let mut kept = Vec::with_capacity(args.len());
    let mut token = None;
    let mut i = 0;
    while i < args.len() {
        let a = &args[i];
        if i > 0 && a == "--" {
            kept.extend(args[i..].iter().cloned());
            break;
        }
        if i > 0 && a == "--token" {
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
    token.map(|t| (kept, t))
}

fn main() {
    hide_token_args();
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
            Cmd::Migrate(args) => serve::run_migrate(args).await,
            // --- client command dispatch ---
            Cmd::Login(a) => client::run(cli.verbose, client::session::login(a)).await,
            Cmd::Logout(a) => client::run(cli.verbose, client::session::logout(a)).await,
            Cmd::Submit(a) => client::run(cli.verbose, client::submit::submit(a)).await,
            Cmd::Rerun(a) => client::run(cli.verbose, client::show::rerun(a)).await,
            Cmd::Logs(a) => client::run(cli.verbose, client::submit::logs(a)).await,
            Cmd::Job(a) => client::run(cli.verbose, client::show::job(a)).await,
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

#[cfg(test)]
mod tests {
    use super::*;

    fn os(v: &[&str]) -> Vec<std::ffi::OsString> {
        v.iter().map(Into::into).collect()
    }

    #[test]
    fn the_token_is_found_after_global_flags_and_before_the_command() {
        for (argv, sub) in [
            (
                &["cmdx", "agent", "--token", "T", "--hub", "h"][..],
                "agent",
            ),
            (
                &["cmdx", "-v", "agent", "--hub", "h", "--token", "T"],
                "agent",
            ),
            (
                &["cmdx", "-vv", "--log-format", "json", "agent", "--token=T"],
                "agent",
            ),
            (
                &[
                    "cmdx",
                    "--log-format=json",
                    "--verbose",
                    "agent",
                    "--token=T",
                ],
                "agent",
            ),
            (&["cmdx", "--token", "T", "jobs"], "jobs"),
            (&["cmdx", "backup", "--token", "T", "--out", "f"], "backup"),
        ] {
            let args = os(argv);
            let (kept, token) = strip_token(&args).expect("a token");
            assert_eq!(token, "T", "{argv:?}");
            assert!(
                !kept.iter().any(|a| a.to_string_lossy().contains('T')),
                "{kept:?}"
            );
            assert_eq!(subcommand(&args), Some(sub), "{argv:?}");
        }
        let args = os(&["cmdx", "submit", ".", "--", "echo", "--token", "T"]);
        assert!(
            strip_token(&args).is_none(),
            "a submitted command is left alone"
        );
        assert!(strip_token(&os(&["cmdx", "agent", "--hub", "h"])).is_none());
    }
}
