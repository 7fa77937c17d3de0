//! A job's pseudo-terminal (see [`crate::Spec::terminal`]).
//!
//! # Where the pair lives
//! Each job gets a devpts instance of its own: the parent creates it with the new mount API
//! (`fsopen("devpts")`, `fsconfig`, `fsmount`) as a detached mount that no host path leads
//! to, opens its `ptmx` (the master) and the master's peer (`TIOCGPTPEER`, the slave). The
//! job's private root gets that instance at `/dev/pts` (with `/dev/ptmx` a link to
//! `pts/ptmx` in the template), so `tty` names the terminal and tools that open terminals
//! of their own (`script`, `expect`) get them from the job's instance, at most [`MAX_PTYS`].
//! No other job's terminal, nor the agent's, is on it: devpts numbers and finds ptys per
//! instance. Without a private root the instance is used all the same but attached nowhere;
//! only when it cannot be made (an unprivileged caller, a kernel before 5.2) does the pair
//! come from the host's `/dev/ptmx`, whose other ptys the job's uid cannot open (their
//! nodes belong to their owners, mode 0600 or 0620 group `tty`, which the job is not in) and
//! landlock does not let it reach.
//!
//! # What the job gets
//! The slave, owned by the job's uid, as stdout and stderr, and as its controlling terminal
//! (the child takes it with `TIOCSCTTY` right after `setsid`, so the job's init, or the
//! program without one, leads the session and the job runs in its foreground process
//! group). Stdin stays `/dev/null`: a job reading its stdin gets end-of-file at once, every
//! time, as before it had a terminal, and tools that prompt when stdin is a terminal stay
//! non-interactive. A tool that opens `/dev/tty` to ask anyway reads end-of-file once: the
//! parent types the terminal's EOF character (`^D`) before the job starts, so a prompt
//! fails instead of waiting for the wall timeout; a second read waits like a terminal
//! nobody types at. The window size is set on the master (`TIOCSWINSZ`) before the start,
//! and again whenever the caller resizes the terminal ([`Terminal::resize`], or a
//! [`Resizer`] while another task reads the output): the kernel then sends `SIGWINCH` to the
//! terminal's foreground process group, as a terminal emulator's resize does. `COLUMNS` and
//! `LINES` in the job's environment stay what they were at the start (an environment cannot
//! change from outside); programs that follow resizes ask the terminal (`stty size`, `tput
//! cols`, `ioctl(TIOCGWINSZ)`).
//!
//! `TIOCSTI` (typing into a terminal's input), `TIOCLINUX` and `TIOCSETD` (another line
//! discipline) are refused by the seccomp filter whatever the descriptor (the `seccomp` module).
//!
//! # What the caller gets
//! [`Terminal`], the master: one stream holding everything the job wrote to stdout and
//! stderr, in the order it wrote it. The terminal starts with `ONLCR` off, so a `\n` stays a
//! `\n` as on a pipe (the log reads the same whether or not the job had a terminal; whoever
//! displays it adds the carriage return, as the CLI's own terminal and the dashboard's
//! `convertEol` do), and a job can turn it back on with `stty onlcr`. It ends when the last
//! descriptor of the slave is closed (the kernel then answers `EIO`, which [`Terminal`]
//! reads as end-of-file).

use std::ffi::CStr;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::pin::Pin;
use std::sync::{Arc, Weak};
use std::task::{Context, Poll, ready};

use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, ReadBuf};

/// The most terminals a job can hold on its devpts instance, its own included: enough for
/// `script` or a test suite driving a few, and a bound on what one job takes of the host's
/// `kernel.pty.max`.
pub const MAX_PTYS: u32 = 16;

/// Where a job's devpts instance is mounted in its private root.
pub(crate) const PTS_TARGET: &CStr = c"/dev/pts";

const FSOPEN_CLOEXEC: libc::c_uint = 0x1;
const FSCONFIG_SET_STRING: libc::c_uint = 1;
const FSCONFIG_CMD_CREATE: libc::c_uint = 6;
const FSMOUNT_CLOEXEC: libc::c_uint = 0x1;
const MOUNT_ATTR_NOSUID: libc::c_uint = 0x2;
const MOUNT_ATTR_NOEXEC: libc::c_uint = 0x8;

/// The size of a job's terminal, in character cells.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TerminalSize {
    /// Columns.
    pub cols: u16,
    /// Rows.
    pub rows: u16,
}

impl Default for TerminalSize {
    /// 80x24.
    fn default() -> Self {
        Self { cols: 80, rows: 24 }
    }
}

/// A job's pseudo-terminal pair, made by the parent before the clone.
pub(crate) struct Pty {
    /// The caller's end.
    pub(crate) master: OwnedFd,
    /// The job's end (its stdout, stderr and controlling terminal); the parent closes its
    /// copy once the child has started.
    pub(crate) slave: OwnedFd,
    /// The job's devpts instance (a detached mount), for `/dev/pts` in its private root and
    /// for landlock's rule; `None` when the pair comes from the host's `/dev/ptmx`.
    pub(crate) devpts: Option<OwnedFd>,
}

fn check(rc: libc::c_long) -> io::Result<libc::c_long> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// A new devpts instance as a detached mount (`nosuid,noexec`): `ptmx` usable by anyone who
/// can reach it (only the job, through its root), at most [`MAX_PTYS`] terminals.
fn new_instance() -> io::Result<OwnedFd> {
    // SAFETY: fsopen with a static NUL-terminated name; it returns a new descriptor or -1.
    let fs = check(unsafe { libc::syscall(libc::SYS_fsopen, c"devpts".as_ptr(), FSOPEN_CLOEXEC) })?;
    // SAFETY: a new descriptor that nobody else owns.
    let fs = unsafe { OwnedFd::from_raw_fd(fs as RawFd) };
    let max = std::ffi::CString::new(MAX_PTYS.to_string()).expect("digits have no NUL");
    for (key, value) in [
        (c"ptmxmode", c"0666"),
        (c"mode", c"0600"),
        (c"max", max.as_c_str()),
    ] {
        // SAFETY: NUL-terminated key and value, alive for the call.
        check(unsafe {
            libc::syscall(
                libc::SYS_fsconfig,
                fs.as_raw_fd(),
                FSCONFIG_SET_STRING,
                key.as_ptr(),
                value.as_ptr(),
                0,
            )
        })?;
    }
    // SAFETY: fsconfig's create command takes no key or value.
    check(unsafe {
        libc::syscall(
            libc::SYS_fsconfig,
            fs.as_raw_fd(),
            FSCONFIG_CMD_CREATE,
            std::ptr::null::<libc::c_char>(),
            std::ptr::null::<libc::c_void>(),
            0,
        )
    })?;
    // SAFETY: fsmount on the configured context with integer flags.
    let mnt = check(unsafe {
        libc::syscall(
            libc::SYS_fsmount,
            fs.as_raw_fd(),
            FSMOUNT_CLOEXEC,
            MOUNT_ATTR_NOSUID | MOUNT_ATTR_NOEXEC,
        )
    })?;
    // SAFETY: a new descriptor that nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(mnt as RawFd) })
}

/// Opens a pair of `size` for a job running as `owner`: on a devpts instance of its own,
/// or, when `host_fallback` allows and no instance can be made, on the host's `/dev/ptmx`.
pub(crate) fn open(
    size: TerminalSize,
    owner: Option<(u32, u32)>,
    host_fallback: bool,
) -> io::Result<Pty> {
    let flags = libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC;
    let devpts = match new_instance() {
        Ok(fd) => Some(fd),
        Err(e) if host_fallback => {
            tracing::debug!(error = %e, "no devpts instance of the job's own: the host's /dev/ptmx");
            None
        }
        Err(e) => return Err(e),
    };
    // SAFETY: open/openat with static NUL-terminated paths; a new descriptor or -1.
    let master = check(
        unsafe {
            match &devpts {
                Some(d) => libc::openat(d.as_raw_fd(), c"ptmx".as_ptr(), flags),
                None => libc::open(c"/dev/ptmx".as_ptr(), flags),
            }
        }
        .into(),
    )?;
    // SAFETY: a new descriptor that nobody else owns.
    let master = unsafe { OwnedFd::from_raw_fd(master as RawFd) };
    let m = master.as_raw_fd();
    let unlock: libc::c_int = 0;
    // SAFETY: an ioctl on our master with a pointer to a value on the stack.
    check(unsafe { libc::ioctl(m, libc::TIOCSPTLCK, &unlock) }.into())?;
    set_size(&master, size)?;
    // SAFETY: TIOCGPTPEER opens the slave with these flags and returns a new descriptor.
    let slave = check(unsafe { libc::ioctl(m, libc::TIOCGPTPEER, flags) }.into())?;
    // SAFETY: a new descriptor that nobody else owns.
    let slave = unsafe { OwnedFd::from_raw_fd(slave as RawFd) };
    if let Some((uid, gid)) = owner {
        // The job may reopen its terminal (`/dev/stdout`, `/proc/self/fd/1`, `tty`'s name).
        // SAFETY: fchown/fchmod on our own descriptor with integer arguments.
        unsafe {
            check(libc::fchown(slave.as_raw_fd(), uid, gid).into())?;
            check(libc::fchmod(slave.as_raw_fd(), 0o600).into())?;
        }
    }
    settle(&master, &slave)?;
    // SAFETY: fcntl with integer arguments on our own descriptor.
    unsafe {
        let fl = check(libc::fcntl(m, libc::F_GETFL).into())? as libc::c_int;
        check(libc::fcntl(m, libc::F_SETFL, fl | libc::O_NONBLOCK).into())?;
    }
    Ok(Pty {
        master,
        slave,
        devpts,
    })
}

/// Sets the window size of the terminal whose master is `master` (`TIOCSWINSZ`); the kernel
/// signals `SIGWINCH` to the foreground process group when the size changed.
fn set_size(master: &OwnedFd, size: TerminalSize) -> io::Result<()> {
    let ws = libc::winsize {
        ws_row: size.rows,
        ws_col: size.cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: an ioctl on our own descriptor with a pointer to a value on the stack.
    check(unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &ws) }.into())?;
    Ok(())
}

/// Turns `ONLCR` off (see the module docs), then types the terminal's EOF character once:
/// in canonical mode it ends the first read of the terminal with nothing, and is not echoed.
fn settle(master: &OwnedFd, slave: &OwnedFd) -> io::Result<()> {
    // SAFETY: termios is plain data that tcgetattr fills.
    let mut t: libc::termios = unsafe { std::mem::zeroed() };
    // SAFETY: tcgetattr/tcsetattr on our own slave descriptor, with `t` on the stack.
    unsafe {
        check(libc::tcgetattr(slave.as_raw_fd(), &mut t).into())?;
        t.c_oflag &= !libc::ONLCR;
        check(libc::tcsetattr(slave.as_raw_fd(), libc::TCSANOW, &t).into())?;
    }
    let eof = [t.c_cc[libc::VEOF]];
    // SAFETY: writes one byte from `eof`, on the stack.
    let n = check(unsafe { libc::write(master.as_raw_fd(), eof.as_ptr().cast(), 1) } as _)?;
    if n != 1 {
        return Err(io::Error::from_raw_os_error(libc::EIO));
    }
    Ok(())
}

/// The caller's end of a job's pseudo-terminal: everything the job wrote to its stdout and
/// stderr, in order, as one stream (see [`crate::Spec::terminal`]). It reaches end-of-file
/// when no process holds the job's end any more.
#[derive(Debug)]
pub struct Terminal {
    master: AsyncFd<Arc<OwnedFd>>,
}

impl Terminal {
    /// Registers the (non-blocking) master with the runtime.
    pub(crate) fn new(master: OwnedFd) -> io::Result<Self> {
        // SAFETY: the AsyncFd holds a strong reference to the master, so it stays open and the
        // same for the AsyncFd's lifetime (a [`Resizer`] holds a weak one, which at most keeps
        // it open a little longer during a resize, and never closes it).
        let master = unsafe {
            AsyncFd::register_with_interest(Arc::new(master), tokio::io::Interest::READABLE)
        }
        .map_err(io::Error::from)?;
        Ok(Self { master })
    }

    /// Gives the job's terminal a new window size; the job's foreground process group gets
    /// `SIGWINCH` if it changed. Each side must be 1 or more.
    pub fn resize(&self, size: TerminalSize) -> io::Result<()> {
        resize_master(self.master.get_ref(), size)
    }

    /// A handle that resizes this terminal from elsewhere while a task reads it; it does not
    /// keep the terminal open.
    pub fn resizer(&self) -> Resizer {
        Resizer {
            master: Arc::downgrade(self.master.get_ref()),
        }
    }
}

fn resize_master(master: &OwnedFd, size: TerminalSize) -> io::Result<()> {
    if size.cols == 0 || size.rows == 0 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "a terminal needs at least one column and one row",
        ));
    }
    set_size(master, size)
}

/// Resizes a job's [`Terminal`] from another task than the one reading it (see
/// [`Terminal::resizer`]).
#[derive(Debug, Clone)]
pub struct Resizer {
    master: Weak<OwnedFd>,
}

impl Resizer {
    /// As [`Terminal::resize`]; an error once the [`Terminal`] is dropped.
    pub fn resize(&self, size: TerminalSize) -> io::Result<()> {
        let master = self.master.upgrade().ok_or_else(|| {
            io::Error::new(io::ErrorKind::NotConnected, "the job's terminal is closed")
        })?;
        resize_master(&master, size)
    }
}

impl AsyncRead for Terminal {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            let mut guard = ready!(self.master.poll_read_ready(cx))?;
            let unfilled = buf.initialize_unfilled();
            let read = guard.try_io(|fd| {
                // SAFETY: reads at most `unfilled.len()` bytes into `unfilled`.
                let n = unsafe {
                    libc::read(fd.as_raw_fd(), unfilled.as_mut_ptr().cast(), unfilled.len())
                };
                if n < 0 {
                    Err(io::Error::last_os_error())
                } else {
                    Ok(n as usize)
                }
            });
            match read {
                Ok(Ok(n)) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                // Every descriptor of the slave is closed: the end of the job's output.
                Ok(Err(e)) if e.raw_os_error() == Some(libc::EIO) => return Poll::Ready(Ok(())),
                Ok(Err(e)) => return Poll::Ready(Err(e)),
                Err(_would_block) => continue,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a program in the job asks its terminal (`stty size`): `TIOCGWINSZ` on the slave.
    fn slave_size(slave: &OwnedFd) -> TerminalSize {
        // SAFETY: winsize is plain data that the ioctl fills.
        let mut ws: libc::winsize = unsafe { std::mem::zeroed() };
        // SAFETY: an ioctl on our own descriptor with a pointer to `ws` on the stack.
        let rc = unsafe { libc::ioctl(slave.as_raw_fd(), libc::TIOCGWINSZ, &mut ws) };
        assert_eq!(rc, 0, "{}", io::Error::last_os_error());
        TerminalSize {
            cols: ws.ws_col,
            rows: ws.ws_row,
        }
    }

    #[tokio::test]
    async fn a_resize_is_what_the_job_side_of_the_terminal_reports() {
        let size = TerminalSize { cols: 80, rows: 24 };
        let pty = open(size, None, true).expect("a pseudo-terminal");
        let slave = pty.slave;
        let term = Terminal::new(pty.master).expect("register the master");
        assert_eq!(slave_size(&slave), size);

        let bigger = TerminalSize {
            cols: 100,
            rows: 30,
        };
        term.resize(bigger).expect("resize");
        assert_eq!(slave_size(&slave), bigger);

        let resizer = term.resizer();
        let narrow = TerminalSize { cols: 40, rows: 10 };
        resizer.resize(narrow).expect("resize through the handle");
        assert_eq!(slave_size(&slave), narrow);

        let zero = TerminalSize { cols: 0, rows: 10 };
        let e = term.resize(zero).expect_err("zero columns");
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
        assert_eq!(slave_size(&slave), narrow, "a refused size changes nothing");

        drop(term);
        let e = resizer.resize(bigger).expect_err("the terminal is gone");
        assert_eq!(e.kind(), io::ErrorKind::NotConnected);
    }
}
