//! The client commands of `cmdx` (`login`, `submit`, `logs`, `jobs`, `workers`, `cancel`,
//! `token`, `user`, `completions`): a thin layer of flags over the hub's REST and `/ws/client`
//! APIs.
//!
//! Every command resolves its hub URL and token with the precedence flags > `CMDX_HUB` /
//! `CMDX_TOKEN` > the config file written by `cmdx login` ([`config`]). Every failure becomes one
//! line on stderr and exit code 125 (see [`api::HubError`]); `-v` adds detail lines.
//!
//! Exit codes of the commands that wait for a job (`submit`, `logs -f`): the job's own exit
//! code; 128+N when a signal N killed it (OOM kills count as SIGKILL, 137); 124 when its timeout
//! fired; 130 when it was cancelled (or the CLI detached on a second Ctrl-C); 125 for a hub or
//! CLI error, including `setup`, `sandbox` and `worker_lost` failures.

pub mod api;
pub mod config;
pub mod follow;
pub mod listing;
pub mod session;
pub mod submit;
pub mod table;
pub mod zipdir;

use std::sync::atomic::{AtomicU8, Ordering};

use clap::{Args, Subcommand};

/// Verbosity of the client commands (`-v` count), for detail lines on stderr.
static VERBOSE: AtomicU8 = AtomicU8::new(0);

/// Records the `-v` count for [`detail`].
pub fn set_verbose(v: u8) {
    VERBOSE.store(v, Ordering::Relaxed);
}

/// Whether `-v` was given.
pub fn verbose() -> bool {
    VERBOSE.load(Ordering::Relaxed) > 0
}

/// Prints a detail line on stderr when `-v` was given.
pub fn detail(msg: impl std::fmt::Display) {
    if verbose() {
        note(format_args!("cmdx: {msg}"));
    }
}

/// Prints one line on stderr; a closed stderr is ignored (never a panic).
pub fn note(msg: impl std::fmt::Display) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr().lock(), "{msg}");
}

/// Writes `text` to stdout and flushes. A reader that went away (`cmdx jobs | head -1`) ends
/// the output quietly; other write errors are errors.
pub fn out(text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let mut o = std::io::stdout().lock();
    match o.write_all(text.as_bytes()).and_then(|()| o.flush()) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        Err(e) => Err(anyhow::anyhow!("cannot write to stdout: {e}")),
    }
}

/// Where the hub is and who we are: flags that every client command accepts.
#[derive(Args, Clone, Default)]
pub struct ConnArgs {
    /// Hub URL (default: CMDX_HUB, then the config file written by `cmdx login`).
    #[arg(long, global = true)]
    pub hub: Option<String>,
    /// Session token (default: CMDX_TOKEN, then the config file).
    #[arg(long, global = true)]
    pub token: Option<String>,
}

/// `cmdx login`.
#[derive(Args)]
pub struct LoginArgs {
    /// Connection flags.
    #[command(flatten)]
    pub conn: ConnArgs,
    /// Account email (prompted for on a terminal when absent).
    #[arg(long)]
    pub email: Option<String>,
    /// Read the password from the first line of stdin instead of prompting.
    #[arg(long)]
    pub password_stdin: bool,
}

/// `cmdx logout`.
#[derive(Args)]
pub struct LogoutArgs {
    /// Connection flags.
    #[command(flatten)]
    pub conn: ConnArgs,
}

/// `cmdx submit`.
#[derive(Args)]
pub struct SubmitArgs {
    /// Connection flags.
    #[command(flatten)]
    pub conn: ConnArgs,
    /// Folder to zip and upload (honours .gitignore and .cmdxignore, skips .git). Without it
    /// (and without --zip) the job runs in an empty folder.
    #[arg(value_name = "DIR", conflicts_with = "zip")]
    pub dir: Option<std::path::PathBuf>,
    /// Upload this ZIP file as is.
    #[arg(long, value_name = "FILE")]
    pub zip: Option<std::path::PathBuf>,
    /// Wall-clock timeout in seconds (the hub's default when absent).
    #[arg(long, value_name = "SECS")]
    pub timeout: Option<u64>,
    /// Only run on a worker advertising this tag (repeatable).
    #[arg(long = "tag", value_name = "T")]
    pub tags: Vec<String>,
    /// Extra environment variable for the job (repeatable).
    #[arg(long = "env", value_name = "K=V", value_parser = parse_env)]
    pub env: Vec<(String, String)>,
    /// Print the job id and return without waiting.
    #[arg(long, short = 'd')]
    pub detach: bool,
    /// Machine output: with --detach `{"jobId":…}`; otherwise wait without streaming and print
    /// the final job document as one JSON line.
    #[arg(long)]
    pub json: bool,
    /// The shell command (after `--`), run as `sh -c` in the job folder.
    #[arg(last = true, required = true, value_name = "COMMAND")]
    pub command: Vec<String>,
}

fn parse_env(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("expected K=V, got {s:?}")),
    }
}

/// `cmdx logs`.
#[derive(Args)]
pub struct LogsArgs {
    /// Connection flags.
    #[command(flatten)]
    pub conn: ConnArgs,
    /// Job id.
    pub job: String,
    /// Follow live output until the job ends, then exit with the job's code.
    #[arg(long, short = 'f')]
    pub follow: bool,
    /// With -f: replay the stored output first (without it, -f prints only new output).
    #[arg(long)]
    pub from_start: bool,
}

/// `cmdx jobs`.
#[derive(Args)]
pub struct JobsArgs {
    /// Connection flags.
    #[command(flatten)]
    pub conn: ConnArgs,
    /// Only jobs with this status.
    #[arg(long, value_parser = ["queued", "assigned", "running", "completed", "failed", "cancelled"])]
    pub status: Option<String>,
    /// Most jobs to show (1..=1000).
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub limit: u32,
    /// JSON lines (the default when stdout is not a terminal).
    #[arg(long)]
    pub json: bool,
}

/// `cmdx workers`.
#[derive(Args)]
pub struct WorkersArgs {
    /// Connection flags.
    #[command(flatten)]
    pub conn: ConnArgs,
    /// JSON lines (the default when stdout is not a terminal).
    #[arg(long)]
    pub json: bool,
    /// An action on one worker instead of the list.
    #[command(subcommand)]
    pub action: Option<WorkersAction>,
}

/// `cmdx workers <action>`.
#[derive(clap::Subcommand)]
pub enum WorkersAction {
    /// Admin: the worker takes no new jobs and finishes its running ones.
    Drain {
        /// Worker id (see `cmdx workers`).
        id: String,
    },
}

/// `cmdx cancel`.
#[derive(Args)]
pub struct CancelArgs {
    /// Connection flags.
    #[command(flatten)]
    pub conn: ConnArgs,
    /// Job id.
    pub job: String,
}

/// `cmdx token`.
#[derive(Args)]
pub struct TokenArgs {
    /// Connection flags.
    #[command(flatten)]
    pub conn: ConnArgs,
    /// What to mint.
    #[command(subcommand)]
    pub what: TokenCmd,
}

/// Token kinds.
#[derive(Subcommand)]
pub enum TokenCmd {
    /// Mint a worker token (admin) and print it; give it to `cmdx agent --token`.
    Worker {
        /// Label for people.
        #[arg(long)]
        name: Option<String>,
        /// Lifetime, e.g. `30d`, `12h` (the hub's default, 30 days, when absent).
        #[arg(long, value_parser = humantime::parse_duration)]
        ttl: Option<std::time::Duration>,
    },
}

/// `cmdx user`.
#[derive(Args)]
pub struct UserArgs {
    /// Connection flags.
    #[command(flatten)]
    pub conn: ConnArgs,
    /// What to do.
    #[command(subcommand)]
    pub what: UserCmd,
}

/// User administration.
#[derive(Subcommand)]
pub enum UserCmd {
    /// Create an account (admin).
    Add {
        /// Email (login name).
        email: String,
        /// Make the account an admin.
        #[arg(long)]
        admin: bool,
        /// Read the password from the first line of stdin instead of prompting.
        #[arg(long)]
        password_stdin: bool,
    },
}

/// `cmdx completions`.
#[derive(Args)]
pub struct CompletionsArgs {
    /// Shell to generate completions for.
    pub shell: clap_complete::Shell,
}

/// Prints shell completions for `C` (the whole `cmdx` command line) to stdout.
pub fn completions<C: clap::CommandFactory>(args: CompletionsArgs) -> anyhow::Result<i32> {
    let mut cmd = C::command();
    let mut buf = Vec::new();
    clap_complete::generate(args.shell, &mut cmd, "cmdx", &mut buf);
    out(&String::from_utf8_lossy(&buf))?;
    Ok(0)
}

/// Runs one client command future after recording the `-v` count for [`detail`].
pub async fn run(
    verbose: u8,
    cmd: impl std::future::Future<Output = anyhow::Result<i32>>,
) -> anyhow::Result<i32> {
    set_verbose(verbose);
    cmd.await
}
