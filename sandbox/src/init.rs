//! The job's init (PID 1 of its PID namespace): the embedded `cmdx-init` executable and its
//! status records.
//!
//! `build.rs` compiles `init/cmdx_init.rs` (its docs say what it does and why) into a
//! static executable of a few KiB; it is copied once per process into a sealed memfd and
//! executed from there with `execveat(fd, "", AT_EMPTY_PATH)`, so nothing is written to the
//! host's disk and no path needs to exist inside the job's root. Landlock does not restrict
//! executing a memfd (its file system lives on an internal, never-mountable mount), which is
//! why the init can run after landlock and seccomp are in force, like any job process.

use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt as _;
use std::sync::OnceLock;

static INIT_ELF: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/cmdx-init"));

/// The descriptor number of the status channel in the init (see `init/cmdx_init.rs`).
pub(crate) const STATUS_FD: RawFd = 3;

/// `argv[0]` of the init as the job sees it (`/proc/1/cmdline`).
pub(crate) const NAME: &std::ffi::CStr = c"cmdx-init";

/// Record kind: the program was executed (value 0) or not (value: errno).
const KIND_EXEC: u32 = 1;
/// Record kind: the main process ended (value: raw wait status).
const KIND_EXIT: u32 = 2;

static MEMFD: OnceLock<Result<OwnedFd, i32>> = OnceLock::new();

/// A read-only descriptor of the sealed memfd holding `cmdx-init`, made on first use.
pub(crate) fn program() -> io::Result<RawFd> {
    match MEMFD.get_or_init(|| make_memfd().map_err(|e| e.raw_os_error().unwrap_or(libc::EIO))) {
        Ok(fd) => Ok(fd.as_raw_fd()),
        Err(errno) => Err(io::Error::from_raw_os_error(*errno)),
    }
}

fn make_memfd() -> io::Result<OwnedFd> {
    // SAFETY: memfd_create with a static NUL-terminated name and flags.
    let raw = unsafe {
        libc::memfd_create(
            c"cmdx-init".as_ptr(),
            libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING,
        )
    };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: memfd_create returned a new descriptor that nobody else owns.
    let rw = unsafe { OwnedFd::from_raw_fd(raw) };
    let mut file = std::fs::File::from(rw);
    file.write_all(INIT_ELF)?;
    // No more writes, no resizing, no changing the seals: the executable is fixed.
    let seals = libc::F_SEAL_SEAL | libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_WRITE;
    // SAFETY: fcntl with integer arguments on our own descriptor.
    if unsafe { libc::fcntl(file.as_raw_fd(), libc::F_ADD_SEALS, seals) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // Keep a read-only descriptor only: a file open for writing cannot be executed.
    let ro = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_CLOEXEC)
        .open(format!("/proc/self/fd/{}", file.as_raw_fd()))?;
    Ok(OwnedFd::from(ro))
}

/// What the init reported on its status channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Record {
    /// The program was executed (`None`) or failed to execute (`Some(errno)`).
    Exec(Option<i32>),
    /// The main process ended with this raw wait status.
    Exit(i32),
}

/// Decodes one 8-byte record.
pub(crate) fn decode(buf: [u8; 8]) -> Option<Record> {
    let kind = u32::from_ne_bytes(buf[..4].try_into().ok()?);
    let value = i32::from_ne_bytes(buf[4..].try_into().ok()?);
    match kind {
        KIND_EXEC => Some(Record::Exec((value != 0).then_some(value))),
        KIND_EXIT => Some(Record::Exit(value)),
        _ => None,
    }
}

/// Blocking read of the first record (the exec result): `Err` when the init ended without
/// one. The parent thread waits here only for as long as the job's `exec` takes, as it waits
/// for the init's own `exec` under `CLONE_VFORK`.
pub(crate) fn read_exec_record(status: &mut std::fs::File) -> io::Result<Option<i32>> {
    let mut buf = [0u8; 8];
    status.read_exact(&mut buf)?;
    match decode(buf) {
        Some(Record::Exec(r)) => Ok(r),
        _ => Err(io::Error::from_raw_os_error(libc::EPROTO)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip() {
        let mut b = [0u8; 8];
        b[..4].copy_from_slice(&KIND_EXIT.to_ne_bytes());
        b[4..].copy_from_slice(&(9i32).to_ne_bytes());
        assert_eq!(decode(b), Some(Record::Exit(9)));
        b[..4].copy_from_slice(&KIND_EXEC.to_ne_bytes());
        b[4..].copy_from_slice(&0i32.to_ne_bytes());
        assert_eq!(decode(b), Some(Record::Exec(None)));
        b[4..].copy_from_slice(&2i32.to_ne_bytes());
        assert_eq!(decode(b), Some(Record::Exec(Some(2))));
        b[..4].copy_from_slice(&7u32.to_ne_bytes());
        assert_eq!(decode(b), None);
    }

    #[test]
    fn the_embedded_init_is_a_small_static_executable() {
        assert_eq!(&INIT_ELF[..4], b"\x7fELF");
        assert!(INIT_ELF.len() < 64 << 10, "{} bytes", INIT_ELF.len());
        program().expect("memfd");
    }
}
