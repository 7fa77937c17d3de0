//! A private PostgreSQL server started from the system's server binaries, for tests and for
//! `loadtest --store postgres`: `initdb` into a temporary folder, `postgres` on a free local
//! port, stopped by its pid.
//!
//! PostgreSQL refuses to run as root, so when this process is root the server runs as the
//! `postgres` user (Debian's package creates it); otherwise it runs as the caller. Binaries are
//! looked up in `CMDX_PG_BIN`, then `/usr/lib/postgresql/<newest>/bin` (Debian's layout), then
//! `PATH`.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running private server. Dropping it stops the server (fast shutdown) and deletes its data.
pub struct PrivateServer {
    bin: PathBuf,
    dir: tempfile::TempDir,
    port: u16,
    run_as: Option<(u32, u32)>,
    child: Option<Child>,
}

/// Errors starting the server.
pub type ServerError = anyhow::Error;

fn err(what: impl std::fmt::Display) -> ServerError {
    anyhow::anyhow!("private PostgreSQL: {what}")
}

/// The folder holding `initdb` and `postgres`.
fn find_bin() -> Result<PathBuf, ServerError> {
    if let Some(dir) = std::env::var_os("CMDX_PG_BIN") {
        return Ok(PathBuf::from(dir));
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v = e.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("postgres").exists().then_some((v, bin))
        })
        .collect();
    versions.sort();
    if let Some((_, bin)) = versions.pop() {
        return Ok(bin);
    }
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .find(|d| d.join("postgres").exists() && d.join("initdb").exists())
        .ok_or_else(|| {
            err("no PostgreSQL server binaries (install Debian's `postgresql`, or set CMDX_PG_BIN)")
        })
}

/// Uid and gid of the `postgres` user when this process is root.
fn server_user() -> Result<Option<(u32, u32)>, ServerError> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Ok(None);
    }
    let passwd = std::fs::read_to_string("/etc/passwd").map_err(err)?;
    passwd
        .lines()
        .map(|l| l.split(':').collect::<Vec<_>>())
        .find(|f| f.len() > 3 && f[0] == "postgres")
        .and_then(|f| Some((f[2].parse().ok()?, f[3].parse().ok()?)))
        .map(Some)
        .ok_or_else(|| err("running as root and there is no `postgres` user to run the server as"))
}

fn free_port() -> Result<u16, ServerError> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(err)?;
    Ok(l.local_addr().map_err(err)?.port())
}

impl PrivateServer {
    /// Initialises a cluster in a new temporary folder and starts it. Takes about 2 s.
    pub fn start() -> Result<PrivateServer, ServerError> {
        let bin = find_bin()?;
        let run_as = server_user()?;
        let dir = tempfile::Builder::new()
            .prefix("cmdx-pg-")
            .tempdir()
            .map_err(err)?;
        if let Some((uid, gid)) = run_as {
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid)).map_err(err)?;
        }
        let mut server = PrivateServer {
            bin,
            dir,
            port: free_port()?,
            run_as,
            child: None,
        };
        let out = server
            .command("initdb")
            .args([
                "-A",
                "trust",
                "-U",
                "postgres",
                "-E",
                "UTF8",
                "--no-sync",
                "-D",
            ])
            .arg(server.data())
            .output()
            .map_err(err)?;
        if !out.status.success() {
            return Err(err(format!(
                "initdb failed: {}",
                String::from_utf8_lossy(&out.stderr)
            )));
        }
        server.resume()?;
        Ok(server)
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn command(&self, name: &str) -> Command {
        let mut cmd = Command::new(self.bin.join(name));
        cmd.current_dir(self.dir.path())
            .stdin(Stdio::null())
            .env("LC_ALL", "C");
        if let Some((uid, gid)) = self.run_as {
            cmd.uid(uid).gid(gid);
        }
        cmd
    }

    /// `postgres://postgres@127.0.0.1:PORT/DB`.
    pub fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }

    /// The port the server listens on (kept across [`PrivateServer::stop`] and `resume`).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Creates a database and returns its URL.
    pub fn create_database(&self, name: &str) -> Result<String, ServerError> {
        let out = self
            .command("psql")
            .args(["-h", "127.0.0.1", "-U", "postgres", "-d", "postgres", "-p"])
            .arg(self.port.to_string())
            .args(["-v", "ON_ERROR_STOP=1", "-c"])
            .arg(format!("CREATE DATABASE \"{name}\""))
            .output()
            .map_err(err)?;
        if !out.status.success() {
            return Err(err(format!(
                "CREATE DATABASE {name}: {}",
                String::from_utf8_lossy(&out.stderr)
            )));
        }
        Ok(self.url(name))
    }

    /// Starts the server again on the same data and port (after [`PrivateServer::stop`] or a
    /// kill); returns once it accepts connections.
    pub fn resume(&mut self) -> Result<(), ServerError> {
        let log = std::fs::File::create(self.dir.path().join("server.log")).map_err(err)?;
        if let Some((uid, gid)) = self.run_as {
            let _ =
                std::os::unix::fs::chown(self.dir.path().join("server.log"), Some(uid), Some(gid));
        }
        let mut cmd = self.command("postgres");
        cmd.arg("-D")
            .arg(self.data())
            .args(["-p", &self.port.to_string(), "-k"])
            .arg(self.dir.path())
            .args([
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                "max_connections=300",
            ])
            .stdout(log.try_clone().map_err(err)?)
            .stderr(log);
        // SAFETY: prctl and getppid are async-signal-safe; the closure allocates nothing. The
        // server dies with this process even when it is killed (the data folder is then left
        // in the temporary directory).
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGQUIT as libc::c_ulong);
                Ok(())
            });
        }
        self.child = Some(cmd.spawn().map_err(err)?);
        self.wait_ready(Duration::from_secs(30))
    }

    fn wait_ready(&mut self, limit: Duration) -> Result<(), ServerError> {
        let start = Instant::now();
        loop {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                // Accepting TCP is not yet accepting queries: ask pg_isready.
                let ok = self
                    .command("pg_isready")
                    .args(["-h", "127.0.0.1", "-q", "-p"])
                    .arg(self.port.to_string())
                    .status()
                    .map(|s| s.success())
                    .unwrap_or(false);
                if ok {
                    return Ok(());
                }
            }
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                return Err(err(format!(
                    "server exited with {status}: {}",
                    std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
                )));
            }
            if start.elapsed() > limit {
                return Err(err("server not ready after 30 s"));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops the server: `SIGINT` (fast shutdown: open sessions end, committed data is kept),
    /// or `SIGKILL` with `kill`, as a crash would.
    pub fn stop(&mut self, kill: bool) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let sig = if kill { libc::SIGKILL } else { libc::SIGINT };
        // SAFETY: kill with a pid we own.
        unsafe { libc::kill(child.id() as libc::pid_t, sig) };
        let _ = child.wait();
        if kill {
            // The postmaster's children outlive a SIGKILL of it for a moment; a new postmaster
            // refuses to start while they hold the shared memory.
            std::thread::sleep(Duration::from_millis(300));
        }
    }

    /// The server's data folder.
    pub fn data_dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for PrivateServer {
    fn drop(&mut self) {
        self.stop(false);
    }
}

/// One server shared by every test of this process, created on first use; each test takes a
/// database of its own ([`PrivateServer::create_database`]). It is started from a thread that
/// lives as long as the process (the parent-death signal follows the thread that started the
/// server) and stopped, its folder deleted, when the process exits.
pub fn shared() -> Result<&'static PrivateServer, ServerError> {
    use std::sync::OnceLock;
    static SHARED: OnceLock<Result<PrivateServer, String>> = OnceLock::new();
    static PID: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(0);
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    extern "C" fn stop_at_exit() {
        let pid = PID.load(std::sync::atomic::Ordering::SeqCst);
        if pid > 0 {
            // SAFETY: signalling and reaping our own child.
            unsafe {
                libc::kill(pid, libc::SIGINT);
                libc::waitpid(pid, std::ptr::null_mut(), 0);
            }
        }
        if let Some(dir) = DIR.get() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
    SHARED
        .get_or_init(|| {
            let (tx, rx) = std::sync::mpsc::channel();
            std::thread::Builder::new()
                .name("cmdx-private-pg".into())
                .spawn(move || {
                    let _ = tx.send(PrivateServer::start());
                    loop {
                        std::thread::park();
                    }
                })
                .map_err(|e| e.to_string())?;
            let server = rx
                .recv()
                .map_err(|e| e.to_string())?
                .map_err(|e| e.to_string())?;
            if let Some(child) = &server.child {
                PID.store(child.id() as i32, std::sync::atomic::Ordering::SeqCst);
            }
            let _ = DIR.set(server.dir.path().to_path_buf());
            // SAFETY: registers a plain function to run at exit.
            unsafe { libc::atexit(stop_at_exit) };
            Ok(server)
        })
        .as_ref()
        .map_err(|e| anyhow::anyhow!("{e}"))
}

/// A database of its own on the [`shared`] server, named after `prefix` and a counter.
pub fn fresh_database(prefix: &str) -> Result<String, ServerError> {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    shared()?.create_database(&format!("{prefix}_{}_{n}", std::process::id()))
}
