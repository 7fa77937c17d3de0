//! The client commands of `cmdx` (`login`, `submit`, `rerun`, `logs`, `jobs`, `job show`,
//! `workers`, `cancel`, `artifacts`, `token`, `user`, `completions`): a thin layer of flags over the hub's REST and
//! `/ws/client` APIs.
//!
//! Every command resolves its hub URL, token and CA file with the precedence flags >
//! `CMDX_HUB` / `CMDX_TOKEN` / `CMDX_CA_FILE` > the config file written by `cmdx login`
//! ([`config`]). An `https://` hub is reached over TLS (rustls), trusting the system's roots and
//! the `--ca-file`. Every failure becomes one
//! line on stderr and exit code 125 (see [`api::HubError`]); `-v` adds detail lines.
//!
//! Exit codes of the commands that wait for a job (`submit`, `rerun -f`, `logs -f`): the job's own exit
//! code; 128+N when a signal N killed it (OOM kills count as SIGKILL, 137); 124 when its timeout
//! fired; 130 when it was cancelled (or the CLI detached on a second Ctrl-C); 125 for a hub or
//! CLI error, including `setup`, `sandbox` and `worker_lost` failures, and a `submit --download`
//! that could not download or unpack the artifacts of a job that succeeded (a job that failed
//! keeps its own code; the download error is printed either way).

pub mod api;
pub mod artifacts;
pub mod config;
pub mod follow;
pub mod listing;
pub mod progress;
pub mod resize;
pub mod session;
pub mod show;
pub mod submit;
pub mod table;
pub mod unzip;
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
    /// PEM file of a private CA to trust besides the system's roots, for an https:// hub whose
    /// certificate it signed (default: CMDX_CA_FILE, then the one given at `cmdx login`).
    #[arg(long, global = true, value_name = "PEM")]
    pub ca_file: Option<std::path::PathBuf>,
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
#[command(after_help = SUBMIT_EXIT_CODES)]
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
    /// Environment variable for the job (repeatable): NAME=VALUE, or NAME alone to pass this
    /// shell's value of NAME, which keeps a secret off the command line (and out of `ps` and the
    /// shell's history).
    #[arg(long = "env", value_name = "NAME[=VALUE]", value_parser = env_entry)]
    pub env: Vec<(String, String)>,
    /// Read environment variables for the job from FILE (repeatable): one NAME=VALUE per line,
    /// the value taken as it is to the end of the line, or NAME alone to pass this shell's value;
    /// blank lines and `#` comments are skipped. `--env` wins over a file.
    #[arg(long = "env-file", value_name = "FILE")]
    pub env_files: Vec<std::path::PathBuf>,
    /// Print the job id and return without waiting.
    #[arg(long, short = 'd')]
    pub detach: bool,
    /// No status lines on stderr (the job id and URL, the queue position, the warning when no
    /// worker can run the job, the summary of a failure); errors are still printed.
    #[arg(long, short = 'q')]
    pub quiet: bool,
    /// Machine output: with --detach `{"jobId":…}`; otherwise wait without streaming and print
    /// the final job document as one JSON line.
    #[arg(long)]
    pub json: bool,
    /// Keep the files matching this glob as the job's artifacts, collected when the command
    /// ends whatever its outcome. Relative to the job folder: `*` stays within one folder, `**`
    /// crosses folders (`dist/**`, `reports/*.xml`). One glob per flag; repeat it for more.
    #[arg(long = "artifacts", value_name = "GLOB")]
    pub artifacts: Vec<String>,
    /// When the job has ended, download its artifacts and unpack them: into DIR when given
    /// (`--download=DIR`, or `--download DIR`), else into a new folder for the job,
    /// `./cmdx-artifacts/<job id>/` (`./cmdx-artifacts` gets a `.gitignore` of `*`, so it stays
    /// out of git and of later uploads). Existing files are not overwritten unless --force. What
    /// was written, and what the job skipped, go to stderr.
    #[arg(
        long,
        value_name = "DIR",
        num_args = 0..=1,
        requires = "artifacts",
        conflicts_with = "detach"
    )]
    pub download: Option<Option<std::path::PathBuf>>,
    /// With --download: replace files that already exist in the folder (regular files only;
    /// a symlink on the way is still refused).
    #[arg(long, requires = "download")]
    pub force: bool,
    /// Run the command with stdout and stderr on pipes of their own instead of in a
    /// pseudo-terminal (the default, which gets this terminal's size when the output is
    /// followed here, 80x24 otherwise).
    #[arg(long)]
    pub no_tty: bool,
    /// Higher runs first, from -100 to 100 (default 0; above the hub's ceiling, 50 by default,
    /// admins only). Within a priority users take turns; a running job is never preempted.
    #[arg(long, allow_negative_numbers = true, value_parser = clap::value_parser!(i32).range(-100..=100))]
    pub priority: Option<i32>,
    /// Run the command in this OCI image (`alpine:3.20`, `registry.example.com/team/tool:1`,
    /// `…@sha256:HEX`) instead of the worker host's root; the job folder is `/workspace`.
    #[arg(long, value_name = "REF")]
    pub image: Option<String>,
    /// The shell command (after `--`), run as `sh -c` in the job folder.
    #[arg(last = true, value_name = "COMMAND")]
    pub command: Vec<String>,
}

/// The exit codes of `cmdx submit`, shown under its `--help`.
const SUBMIT_EXIT_CODES: &str = "\
Exit codes:
  the job's own exit code when it ran to the end (0 when it completed)
  128+N  the job was killed by signal N (137 when out of memory)
  124    the job's timeout fired
  130    the job was cancelled, or the CLI detached on a second Ctrl-C
  125    a hub or CLI error (also setup, sandbox and lost-worker failures, and a failed
         --download after a job that completed; a failed job keeps its own code and the
         download error is printed either way)";

/// One environment variable as `--env` and env files give it: `NAME=VALUE`, or `NAME` for this
/// process's value of NAME.
pub fn env_entry(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() && !k.contains(char::is_whitespace) => {
            Ok((k.to_string(), v.to_string()))
        }
        None if !s.is_empty() && !s.contains(char::is_whitespace) => match std::env::var(s) {
            Ok(v) => Ok((s.to_string(), v)),
            Err(_) => Err(format!(
                "{s} is not set in this environment: export it, or give {s}=VALUE"
            )),
        },
        _ => Err(format!("expected NAME=VALUE or NAME, got {s:?}")),
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
    /// Follow live output until the job ends, then exit with the job's code. What was already
    /// printed is replayed first (as `docker logs -f` and `kubectl logs -f` do), unless
    /// --no-replay; a finished job's whole log is printed and its code returned.
    #[arg(long, short = 'f')]
    pub follow: bool,
    /// With -f: skip what is already stored and print only new output.
    #[arg(long, requires = "follow", conflicts_with = "from_start")]
    pub no_replay: bool,
    /// With -f: replay the stored output first (the default; kept for older scripts).
    #[arg(long, hide = true)]
    pub from_start: bool,
    /// Only the last N lines of what is stored now (then, with -f, what comes next), as
    /// `docker logs --tail` and `kubectl logs --tail`.
    #[arg(long, value_name = "N", conflicts_with_all = ["no_replay", "from_start"])]
    pub tail: Option<u64>,
    /// Only output the hub stored since this time: a duration before now (`10m`, `1h30m`) or
    /// an RFC 3339 UTC time (`2026-12-04T03:00:00Z`), as `docker logs --since`. Times are the
    /// hub's (when it stored each chunk of output). With --tail, whichever starts later.
    #[arg(long, value_name = "DURATION|TIME", value_parser = parse_since, conflicts_with_all = ["no_replay", "from_start"])]
    pub since: Option<std::time::SystemTime>,
}

/// `--since`: a duration before now, or an RFC 3339 time (UTC).
fn parse_since(s: &str) -> Result<std::time::SystemTime, String> {
    if let Ok(d) = humantime::parse_duration(s) {
        return std::time::SystemTime::now()
            .checked_sub(d)
            .ok_or_else(|| format!("{s} reaches before the epoch"));
    }
    humantime::parse_rfc3339_weak(s).map_err(|_| {
        format!("`{s}` is neither a duration (10m, 2h) nor an RFC 3339 time (2026-12-04T03:00:00Z)")
    })
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
    /// Admin: the worker takes no new jobs and finishes its running ones; it stays drained
    /// across its agent's restarts and the hub's until `cmdx workers resume`.
    Drain {
        /// Worker id (see `cmdx workers`).
        id: String,
    },
    /// Admin: a drained worker takes jobs again.
    Resume {
        /// Worker id (see `cmdx workers`).
        id: String,
    },
    /// Admin: forgets the worker; its running jobs go back to the queue and its id is free to
    /// enrol again (a running agent does at its next connect).
    Remove {
        /// Worker id (see `cmdx workers`).
        id: String,
    },
}

/// `cmdx job`.
#[derive(Args)]
pub struct JobArgs {
    /// Connection flags.
    #[command(flatten)]
    pub conn: ConnArgs,
    /// What to do.
    #[command(subcommand)]
    pub what: JobCmd,
}

/// One job.
#[derive(Subcommand)]
pub enum JobCmd {
    /// Everything about one job, for people: status and how it ended, command, tags, worker,
    /// times, queue position, attempts, output and artifacts (not the output itself: cmdx logs).
    Show {
        /// Job id.
        job: String,
        /// The hub's whole job document as one JSON line instead.
        #[arg(long)]
        json: bool,
    },
    /// Give a running job's terminal a new size, as resizing a terminal window does: the job
    /// gets SIGWINCH and `stty size` / `tput cols` report the new size (COLUMNS and LINES keep
    /// the size it started with). A foreground `cmdx submit` does this by itself when your
    /// terminal is resized.
    Resize {
        /// Job id.
        job: String,
        /// The new size, COLUMNSxROWS (e.g. 120x40), each 1 to 1000.
        #[arg(value_name = "COLSxROWS", value_parser = resize::parse_size)]
        size: cmdx_proto::WindowSize,
    },
}

/// `cmdx rerun`.
#[derive(Args)]
#[command(after_help = SUBMIT_EXIT_CODES)]
pub struct RerunArgs {
    /// Connection flags.
    #[command(flatten)]
    pub conn: ConnArgs,
    /// The job to run again (its command, file, tags, env, timeout, attempts and artifact globs
    /// are reused; the hub keeps the env values, which clients never see).
    pub job: String,
    /// Follow the new job as `cmdx submit` does (stream its output, exit with its code) instead
    /// of printing its id and returning.
    #[arg(long, short = 'f')]
    pub follow: bool,
    /// No status lines on stderr (as `cmdx submit -q`).
    #[arg(long, short = 'q')]
    pub quiet: bool,
    /// Machine output: `{"jobId":…}`; with --follow, wait without streaming and print the final
    /// job document as one JSON line.
    #[arg(long)]
    pub json: bool,
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

/// `cmdx artifacts`.
#[derive(Args)]
pub struct ArtifactsArgs {
    /// Connection flags.
    #[command(flatten)]
    pub conn: ConnArgs,
    /// Job id.
    pub job: String,
    /// Download the artifacts and unpack them into this folder (created if missing; nothing
    /// outside it is written, existing files are never overwritten, symlinks never followed).
    /// Prints the paths written.
    #[arg(long, value_name = "DIR")]
    pub out: Option<std::path::PathBuf>,
    /// Save the artifacts as one ZIP file, as stored on the hub.
    #[arg(long, value_name = "FILE")]
    pub zip: Option<std::path::PathBuf>,
    /// With --out: replace files that already exist in the folder (regular files only).
    #[arg(long, requires = "out")]
    pub force: bool,
    /// Without --out/--zip: one JSON line with the listing (the default when stdout is not a
    /// terminal).
    #[arg(long)]
    pub json: bool,
}

/// `cmdx token`.
#[derive(Args)]
pub struct TokenArgs {
    /// Connection flags.
    #[command(flatten)]
    pub conn: ConnArgs,
    /// What to do.
    #[command(subcommand)]
    pub what: TokenCmd,
}

/// Worker token administration (admin).
#[derive(Subcommand)]
pub enum TokenCmd {
    /// Mint a worker token and print it; give it to `cmdx agent` as CMDX_AGENT_TOKEN or in a
    /// --token-file.
    Worker {
        /// Label for people.
        #[arg(long)]
        name: Option<String>,
        /// Lifetime, e.g. `30d`, `12h` (the hub's default, 30 days, when absent).
        #[arg(long, value_parser = humantime::parse_duration)]
        ttl: Option<std::time::Duration>,
        /// Scope the token to these tags (comma-separated): agents using it may advertise only
        /// these, so they receive only jobs that ask for them (or for no tag).
        #[arg(long, value_delimiter = ',')]
        tags: Option<Vec<String>>,
    },
    /// List live worker tokens (id, label, expiry, scope, enrolled workers); never the secret.
    List {
        /// One JSON document instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Revoke a worker token: it stops working at once and its agents' sessions are closed.
    Revoke {
        /// Token id (from `cmdx token list`).
        token_id: String,
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
    /// List the accounts (admin): id, email, role, disabled or not, own quotas.
    List,
    /// Disable an account (admin): it cannot sign in and its sessions end at once.
    Disable {
        /// The user's email or id.
        user: String,
    },
    /// Enable a disabled account again (admin).
    Enable {
        /// The user's email or id.
        user: String,
    },
    /// Make a user an admin or a plain user (admin); their sessions end (they sign in again).
    Role {
        /// The user's email or id.
        user: String,
        /// `admin` or `user`.
        #[arg(value_parser = ["admin", "user"])]
        role: String,
    },
    /// Set a new password for a user (admin); their sessions end.
    Passwd {
        /// The user's email or id.
        user: String,
        /// Read the password from the first line of stdin instead of prompting.
        #[arg(long)]
        password_stdin: bool,
    },
    /// Delete an account (admin); say what becomes of its jobs.
    Delete {
        /// The user's email or id.
        user: String,
        /// Keep the user's jobs and their output (admins still see them).
        #[arg(
            long,
            conflicts_with = "remove_jobs",
            required_unless_present = "remove_jobs"
        )]
        keep_jobs: bool,
        /// Delete the user's jobs, their output and the user's files (refused while any job
        /// has not finished).
        #[arg(long)]
        remove_jobs: bool,
    },
    /// Show or set a user's own quotas (admin): most jobs queued (more are refused) and most
    /// running (more wait). Without flags, shows them.
    Quota {
        /// The user's email or id.
        user: String,
        /// Most jobs queued at once: a number (0: no limit) or `default` (the hub's setting).
        #[arg(long, value_name = "N|default")]
        max_queued: Option<QuotaValue>,
        /// Most jobs assigned or running at once: a number (0: no limit) or `default`.
        #[arg(long, value_name = "N|default")]
        max_running: Option<QuotaValue>,
    },
}

/// A quota given on the command line: a number, or `default` for the hub's setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuotaValue {
    /// This many (0: no limit).
    Limit(u32),
    /// The hub's setting.
    Default,
}

impl std::str::FromStr for QuotaValue {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "default" => Ok(QuotaValue::Default),
            n => n
                .parse()
                .map(QuotaValue::Limit)
                .map_err(|_| format!("{n:?} is not a number of jobs or `default`")),
        }
    }
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
