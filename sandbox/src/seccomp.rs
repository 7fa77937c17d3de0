//! The seccomp-bpf filters of a job, built in the parent and installed last in the child.
//!
//! Modelled on Docker's default profile, as a deny list (everything else is allowed):
//! - `EPERM` for kernel keyrings, bpf, perf, userfaultfd, io_uring, mounts and namespaces
//!   (`mount`, `umount2`, `pivot_root`, `chroot`, `setns`, `unshare`, the new mount API),
//!   `clone` with any namespace flag, tracing and cross-process memory access (`ptrace`,
//!   `process_vm_readv/writev`, `kcmp`, `pidfd_getfd`), kexec, module loading,
//!   `open_by_handle_at` / `name_to_handle_at`, reboot, swap, accounting, quotas, clock
//!   setting, `syslog`, `ioctl(TIOCSTI)`, `ioctl(TIOCLINUX)` and `ioctl(TIOCSETD)`,
//!   `socket(AF_VSOCK)` (host and VM sockets that the network namespace does not cover), and
//!   `personality` with any persona but the ones Docker's profile allows (Linux, its 32-bit
//!   variant, `UNAME26`, and the query `0xffffffff`): other personas change how the kernel
//!   treats the process (e.g. `READ_IMPLIES_EXEC`, `ADDR_NO_RANDOMIZE`);
//! - `ENOSYS` for `clone3` (its flags live in memory a filter cannot inspect; libc falls
//!   back to `clone`, whose flags are checked);
//! - on x86_64, `ENOSYS` for the x32 syscall range, and a foreign architecture kills the
//!   process (a deny list keyed by syscall number must not be bypassed by another ABI).

use std::collections::BTreeMap;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

use crate::error::{Error, Result};

/// The two programs installed in the child, in this order.
pub(crate) struct Filters {
    /// Architecture check, x32 range and `clone3` -> `ENOSYS` (hand-assembled).
    pub(crate) guard: Vec<libc::sock_filter>,
    /// The deny list -> `EPERM` (compiled by seccompiler).
    pub(crate) deny: BpfProgram,
}

/// Syscalls denied outright with `EPERM`.
fn denied() -> Vec<libc::c_long> {
    let mut v = vec![
        libc::SYS_acct,
        libc::SYS_add_key,
        libc::SYS_bpf,
        libc::SYS_chroot,
        libc::SYS_clock_adjtime,
        libc::SYS_clock_settime,
        libc::SYS_delete_module,
        libc::SYS_finit_module,
        libc::SYS_fsconfig,
        libc::SYS_fsmount,
        libc::SYS_fsopen,
        libc::SYS_fspick,
        libc::SYS_init_module,
        libc::SYS_io_uring_enter,
        libc::SYS_io_uring_register,
        libc::SYS_io_uring_setup,
        libc::SYS_kcmp,
        libc::SYS_kexec_file_load,
        libc::SYS_kexec_load,
        libc::SYS_keyctl,
        libc::SYS_lookup_dcookie,
        libc::SYS_mount,
        libc::SYS_mount_setattr,
        libc::SYS_move_mount,
        libc::SYS_name_to_handle_at,
        libc::SYS_open_by_handle_at,
        libc::SYS_open_tree,
        libc::SYS_perf_event_open,
        libc::SYS_pidfd_getfd,
        libc::SYS_pivot_root,
        libc::SYS_process_vm_readv,
        libc::SYS_process_vm_writev,
        libc::SYS_ptrace,
        libc::SYS_quotactl,
        libc::SYS_quotactl_fd,
        libc::SYS_reboot,
        libc::SYS_request_key,
        libc::SYS_setns,
        libc::SYS_settimeofday,
        libc::SYS_swapoff,
        libc::SYS_swapon,
        libc::SYS_syslog,
        libc::SYS_umount2,
        libc::SYS_unshare,
        libc::SYS_userfaultfd,
        libc::SYS_vhangup,
    ];
    #[cfg(target_arch = "x86_64")]
    v.extend([
        libc::SYS_ioperm,
        libc::SYS_iopl,
        libc::SYS_nfsservctl,
        libc::SYS_uselib,
    ]);
    v
}

/// `personality` values a job may set or query (Docker's default profile): `PER_LINUX`,
/// `PER_LINUX32`, `UNAME26`, `PER_LINUX32 | UNAME26`, and `0xffffffff` (query only).
const ALLOWED_PERSONAS: [u64; 5] = [0x0, 0x8, 0x20000, 0x20008, 0xffff_ffff];

/// Namespace flags refused in `clone`'s flags argument.
const NS_FLAGS: [libc::c_int; 7] = [
    libc::CLONE_NEWNS,
    libc::CLONE_NEWUTS,
    libc::CLONE_NEWIPC,
    libc::CLONE_NEWUSER,
    libc::CLONE_NEWPID,
    libc::CLONE_NEWNET,
    libc::CLONE_NEWCGROUP,
];

fn target_arch() -> Result<TargetArch> {
    TargetArch::try_from(std::env::consts::ARCH).map_err(|e| Error::Seccomp(e.to_string()))
}

fn cond(arg: u8, len: SeccompCmpArgLen, op: SeccompCmpOp, value: u64) -> Result<SeccompCondition> {
    SeccompCondition::new(arg, len, op, value).map_err(|e| Error::Seccomp(e.to_string()))
}

fn rule(conds: Vec<SeccompCondition>) -> Result<SeccompRule> {
    SeccompRule::new(conds).map_err(|e| Error::Seccomp(e.to_string()))
}

/// The programs, compiled once per process (they do not depend on the spec).
pub(crate) fn filters() -> Result<&'static Filters> {
    static FILTERS: std::sync::OnceLock<std::result::Result<Filters, String>> =
        std::sync::OnceLock::new();
    match FILTERS.get_or_init(|| build().map_err(|e| e.to_string())) {
        Ok(f) => Ok(f),
        Err(e) => Err(Error::Seccomp(e.clone())),
    }
}

/// Build both programs for the running architecture.
fn build() -> Result<Filters> {
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    for nr in denied() {
        rules.insert(nr, Vec::new());
    }
    let clone_rules = NS_FLAGS
        .iter()
        .map(|&f| {
            let f = f as u64;
            rule(vec![cond(
                0,
                SeccompCmpArgLen::Qword,
                SeccompCmpOp::MaskedEq(f),
                f,
            )?])
        })
        .collect::<Result<Vec<_>>>()?;
    rules.insert(libc::SYS_clone, clone_rules);
    let ioctl_rules = [libc::TIOCSTI, libc::TIOCLINUX, libc::TIOCSETD]
        .iter()
        .map(|&req| {
            rule(vec![cond(
                1,
                SeccompCmpArgLen::Dword,
                SeccompCmpOp::Eq,
                req,
            )?])
        })
        .collect::<Result<Vec<_>>>()?;
    rules.insert(libc::SYS_ioctl, ioctl_rules);
    rules.insert(
        libc::SYS_socket,
        vec![rule(vec![cond(
            0,
            SeccompCmpArgLen::Dword,
            SeccompCmpOp::Eq,
            libc::AF_VSOCK as u64,
        )?])?],
    );
    // One rule, its conditions ANDed: the persona is none of the allowed ones.
    let persona_rule = ALLOWED_PERSONAS
        .iter()
        .map(|&p| cond(0, SeccompCmpArgLen::Dword, SeccompCmpOp::Ne, p))
        .collect::<Result<Vec<_>>>()?;
    rules.insert(libc::SYS_personality, vec![rule(persona_rule)?]);
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::EPERM as u32),
        target_arch()?,
    )
    .map_err(|e| Error::Seccomp(e.to_string()))?;
    let deny: BpfProgram = filter
        .try_into()
        .map_err(|e: seccompiler::BackendError| Error::Seccomp(e.to_string()))?;
    Ok(Filters {
        guard: guard_program(),
        deny,
    })
}

const fn stmt(code: u32, k: u32) -> libc::sock_filter {
    libc::sock_filter {
        code: code as u16,
        jt: 0,
        jf: 0,
        k,
    }
}

const fn jump(code: u32, k: u32, jt: u8, jf: u8) -> libc::sock_filter {
    libc::sock_filter {
        code: code as u16,
        jt,
        jf,
        k,
    }
}

/// `AUDIT_ARCH_*` of the running architecture.
#[cfg(target_arch = "x86_64")]
const AUDIT_ARCH: u32 = 0xC000_003E;
#[cfg(target_arch = "aarch64")]
const AUDIT_ARCH: u32 = 0xC000_00B7;
#[cfg(target_arch = "riscv64")]
const AUDIT_ARCH: u32 = 0xC000_00F3;

/// Offsets in `struct seccomp_data`.
const OFF_NR: u32 = 0;
const OFF_ARCH: u32 = 4;

fn guard_program() -> Vec<libc::sock_filter> {
    use libc::{BPF_ABS, BPF_JEQ, BPF_JGE, BPF_JMP, BPF_K, BPF_LD, BPF_RET, BPF_W};
    let enosys = libc::SECCOMP_RET_ERRNO | libc::ENOSYS as u32;
    let x32_bit: u32 = if cfg!(target_arch = "x86_64") {
        0x4000_0000
    } else {
        u32::MAX
    };
    vec![
        stmt(BPF_LD | BPF_W | BPF_ABS, OFF_ARCH),
        jump(BPF_JMP | BPF_JEQ | BPF_K, AUDIT_ARCH, 1, 0),
        stmt(BPF_RET | BPF_K, libc::SECCOMP_RET_KILL_PROCESS),
        stmt(BPF_LD | BPF_W | BPF_ABS, OFF_NR),
        jump(BPF_JMP | BPF_JGE | BPF_K, x32_bit, 1, 0),
        jump(BPF_JMP | BPF_JEQ | BPF_K, libc::SYS_clone3 as u32, 0, 1),
        stmt(BPF_RET | BPF_K, enosys),
        stmt(BPF_RET | BPF_K, libc::SECCOMP_RET_ALLOW),
    ]
}
