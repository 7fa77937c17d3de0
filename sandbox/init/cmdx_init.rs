//! `cmdx-init`: PID 1 of a job's PID namespace.
//!
//! Built by `build.rs` as a freestanding static executable (no libc, no allocator, raw
//! system calls; x86_64 and aarch64), embedded in the sandbox and executed from a sealed
//! memfd, so starting it costs one small `exec` and nothing on the host's disk.
//!
//! `cmdx-init PROGRAM ARGS...` blocks every signal, forks, and the child (signals unblocked)
//! executes `PROGRAM ARGS...` with init's own environment. Then init:
//! - forwards every signal it receives (except `SIGCHLD`) to that main process: PID 1 of a
//!   namespace gets no signal it has no handler for, so without init a `SIGTERM` to a job
//!   whose first process is a plain program would be lost;
//! - reaps every child, including orphans re-parented to it, so zombies never pile up
//!   against the job's pids limit;
//! - exits as soon as the main process ends, with its exit code (or 128 + its signal); the
//!   kernel then kills whatever else is left in the namespace.
//!
//! When descriptor 3 is open it is the status channel to the sandbox (made close-on-exec
//! first, so the job never inherits it). Init writes two 8-byte records to it, each a
//! native-endian `u32` kind and `i32` value: kind 1 once the program was executed (value 0)
//! or could not be (value: the errno); kind 2 when the main process ended (value: its raw
//! wait status, so the sandbox can tell an exit code from a signal).
#![no_std]
#![no_main]

use core::arch::{asm, global_asm};

#[cfg(target_arch = "x86_64")]
mod nr {
    pub const READ: usize = 0;
    pub const WRITE: usize = 1;
    pub const CLOSE: usize = 3;
    pub const RT_SIGPROCMASK: usize = 14;
    pub const RT_SIGTIMEDWAIT: usize = 128;
    pub const PIPE2: usize = 293;
    pub const CLONE: usize = 56;
    pub const EXECVE: usize = 59;
    pub const EXIT_GROUP: usize = 231;
    pub const WAIT4: usize = 61;
    pub const KILL: usize = 62;
    pub const FCNTL: usize = 72;
}

#[cfg(target_arch = "aarch64")]
mod nr {
    pub const READ: usize = 63;
    pub const WRITE: usize = 64;
    pub const CLOSE: usize = 57;
    pub const RT_SIGPROCMASK: usize = 135;
    pub const RT_SIGTIMEDWAIT: usize = 137;
    pub const PIPE2: usize = 59;
    pub const CLONE: usize = 220;
    pub const EXECVE: usize = 221;
    pub const EXIT_GROUP: usize = 94;
    pub const WAIT4: usize = 260;
    pub const KILL: usize = 129;
    pub const FCNTL: usize = 25;
}

// The kernel enters `_start` with the stack pointer at `argc`, followed by `argv[]`, NULL,
// `envp[]`, NULL. Pass that address to `start_rust` on a 16-byte aligned stack.
#[cfg(target_arch = "x86_64")]
global_asm!(
    ".globl _start",
    "_start:",
    "xor ebp, ebp",
    "mov rdi, rsp",
    "and rsp, -16",
    "call start_rust",
    "ud2",
);

#[cfg(target_arch = "aarch64")]
global_asm!(
    ".globl _start",
    "_start:",
    "mov x29, xzr",
    "mov x30, xzr",
    "mov x0, sp",
    "bl start_rust",
    "brk #0",
);

/// A raw system call with up to five arguments; returns the result or `-errno`.
#[cfg(target_arch = "x86_64")]
unsafe fn sys(n: usize, a: usize, b: usize, c: usize, d: usize, e: usize) -> isize {
    let r: isize;
    // SAFETY: the caller passes a valid system call and arguments for it.
    unsafe {
        asm!("syscall", inlateout("rax") n as isize => r, in("rdi") a, in("rsi") b,
             in("rdx") c, in("r10") d, in("r8") e, lateout("rcx") _, lateout("r11") _,
             options(nostack));
    }
    r
}

/// A raw system call with up to five arguments; returns the result or `-errno`.
#[cfg(target_arch = "aarch64")]
unsafe fn sys(n: usize, a: usize, b: usize, c: usize, d: usize, e: usize) -> isize {
    let r: isize;
    // SAFETY: the caller passes a valid system call and arguments for it.
    unsafe {
        asm!("svc 0", in("x8") n, inlateout("x0") a as isize => r, in("x1") b, in("x2") c,
             in("x3") d, in("x4") e, options(nostack));
    }
    r
}

const SIGCHLD: usize = 17;
const SIG_SETMASK: usize = 2;
const O_CLOEXEC: usize = 0o2000000;
const F_SETFD: usize = 2;
const FD_CLOEXEC: usize = 1;
const WNOHANG: usize = 1;
const ENOENT: i32 = 2;
const STATUS_FD: usize = 3;
const KIND_EXEC: u32 = 1;
const KIND_EXIT: u32 = 2;

fn exit(code: i32) -> ! {
    loop {
        // SAFETY: exit_group ends the process; it never returns.
        unsafe { sys(nr::EXIT_GROUP, code as usize, 0, 0, 0, 0) };
    }
}

#[panic_handler]
fn panic(_: &core::panic::PanicInfo<'_>) -> ! {
    exit(127)
}

fn write_all(fd: usize, buf: &[u8]) {
    let mut off = 0;
    while off < buf.len() {
        // SAFETY: the pointer and length describe the rest of `buf`.
        let n = unsafe { sys(nr::WRITE, fd, buf[off..].as_ptr() as usize, buf.len() - off, 0, 0) };
        if n <= 0 {
            return;
        }
        off += n as usize;
    }
}

/// One status record on descriptor 3 (a single write below `PIPE_BUF`: atomic).
fn record(status: bool, kind: u32, value: i32) {
    if !status {
        return;
    }
    let mut buf = [0u8; 8];
    buf[..4].copy_from_slice(&kind.to_ne_bytes());
    buf[4..].copy_from_slice(&value.to_ne_bytes());
    write_all(STATUS_FD, &buf);
}

fn set_mask(mask: &u64) {
    // SAFETY: the kernel reads 8 bytes of signal mask from `mask`.
    unsafe { sys(nr::RT_SIGPROCMASK, SIG_SETMASK, mask as *const u64 as usize, 0, 8, 0) };
}

/// The exit code a shell would report for a raw wait status.
fn exit_code(status: i32) -> i32 {
    if status & 0x7f == 0 {
        (status >> 8) & 0xff
    } else {
        128 + (status & 0x7f)
    }
}

/// # Safety
/// `sp` is the initial stack pointer the kernel handed to `_start`.
#[unsafe(no_mangle)]
unsafe extern "C" fn start_rust(sp: *const usize) -> ! {
    // SAFETY: the kernel's initial stack layout (see `_start`).
    let (argc, argv, envp) = unsafe {
        let argc = *sp;
        let argv = sp.add(1);
        (argc, argv, argv.add(argc + 1))
    };
    if argc < 2 {
        write_all(2, b"usage: cmdx-init PROGRAM [ARGS...]\n");
        exit(127);
    }
    // SAFETY: fcntl on a descriptor number; it fails harmlessly when 3 is not open.
    let status = unsafe { sys(nr::FCNTL, STATUS_FD, F_SETFD, FD_CLOEXEC, 0, 0) } == 0;
    let all: u64 = !0;
    let none: u64 = 0;
    set_mask(&all);

    // A close-on-exec pipe tells init whether the child's exec worked.
    let mut pipe = [0i32; 2];
    // SAFETY: pipe2 writes two descriptors into `pipe`.
    if unsafe { sys(nr::PIPE2, pipe.as_mut_ptr() as usize, O_CLOEXEC, 0, 0, 0) } < 0 {
        exit(127);
    }
    // SAFETY: a plain fork (clone with only the exit signal).
    let pid = unsafe { sys(nr::CLONE, SIGCHLD, 0, 0, 0, 0) };
    if pid < 0 {
        record(status, KIND_EXEC, -(pid as i32));
        exit(127);
    }
    if pid == 0 {
        // SAFETY: close our copy of the read end; argv[1..] and envp are the kernel's
        // NULL-terminated arrays.
        let err = unsafe {
            sys(nr::CLOSE, pipe[0] as usize, 0, 0, 0, 0);
            set_mask(&none);
            -sys(nr::EXECVE, *argv.add(1), argv.add(1) as usize, envp as usize, 0, 0) as i32
        };
        write_all(pipe[1] as usize, &err.to_ne_bytes());
        exit(127);
    }
    let mut err = [0u8; 4];
    // SAFETY: close the write end; read at most 4 bytes into `err`. Every signal is
    // blocked, so the read is not interrupted: it ends at EOF (exec worked) or with the errno.
    let n = unsafe {
        sys(nr::CLOSE, pipe[1] as usize, 0, 0, 0, 0);
        let n = sys(nr::READ, pipe[0] as usize, err.as_mut_ptr() as usize, 4, 0, 0);
        sys(nr::CLOSE, pipe[0] as usize, 0, 0, 0, 0);
        n
    };
    if n == 4 {
        let errno = i32::from_ne_bytes(err);
        record(status, KIND_EXEC, errno);
        if !status {
            write_all(2, b"cmdx-init: cannot execute the program\n");
        }
        exit(if errno == ENOENT { 127 } else { 126 });
    }
    record(status, KIND_EXEC, 0);

    loop {
        let mut info = [0u64; 16];
        // SAFETY: wait for any signal in `all`; the kernel writes a 128-byte siginfo.
        let sig = unsafe {
            sys(nr::RT_SIGTIMEDWAIT, &all as *const u64 as usize, info.as_mut_ptr() as usize, 0, 8, 0)
        };
        if sig < 0 {
            continue;
        }
        if sig as usize != SIGCHLD {
            // SAFETY: kill with a pid of our own child and the signal we received.
            unsafe { sys(nr::KILL, pid as usize, sig as usize, 0, 0, 0) };
            continue;
        }
        loop {
            let mut st: i32 = 0;
            // SAFETY: reap any child; the kernel writes the status into `st`.
            let r = unsafe {
                sys(nr::WAIT4, usize::MAX, &mut st as *mut i32 as usize, WNOHANG, 0, 0)
            };
            if r <= 0 {
                break;
            }
            if r == pid {
                record(status, KIND_EXIT, st);
                exit(exit_code(st));
            }
        }
    }
}
