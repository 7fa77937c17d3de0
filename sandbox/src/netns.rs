//! Idle private network namespaces, kept for the next job instead of a new one per job.
//!
//! Why: creating a network namespace (`unshare(CLONE_NEWNET)`: loopback device, sysctl
//! tables, per-protocol state) and tearing it down again (the kernel's `cleanup_net` worker)
//! were together the largest per-job cost left in a profile of `loadtest sandbox` with `true`
//! jobs, above the fork and the cgroups.
//!
//! A namespace goes back to the pool only when nothing of its job can be in it any more: the
//! job's cgroup was drained empty (every process of the job, which all inherited the
//! namespace, is dead and reaped), and a job cannot move a process to another namespace
//! (`setns` and `unshare` are denied by seccomp). A job runs as an unprivileged uid without
//! capabilities over the namespace (it belongs to the host's user namespace), so it can
//! change nothing in it that outlives its processes: `lo` stays down, no address, route,
//! sysctl or filter can be added, and its sockets close with its processes. The one thing
//! that could outlive a job is a socket whose descriptor it handed to a host process over a
//! host unix socket; the next job could only reach such a socket through its abstract name,
//! which landlock's abstract-unix-socket scope forbids (it was bound in another landlock
//! domain). So namespaces are reused only when that scope is enforced (landlock ABI 6+);
//! otherwise every job gets a new one, as before.
//!
//! The pool never holds a namespace in use: a job takes it out before it starts and hands it
//! back after its cgroup is empty; concurrent jobs never share one.

use std::os::fd::OwnedFd;
use std::sync::Mutex;

/// Most idle namespaces kept (more than any agent's slot count); extra ones are freed.
const MAX_IDLE: usize = 256;

static IDLE: Mutex<Vec<OwnedFd>> = Mutex::new(Vec::new());

fn idle() -> std::sync::MutexGuard<'static, Vec<OwnedFd>> {
    IDLE.lock().unwrap_or_else(|e| e.into_inner())
}

/// An idle namespace for the next job, if there is one.
pub(crate) fn take() -> Option<OwnedFd> {
    idle().pop()
}

/// Hands back the namespace of a job whose cgroup was drained empty.
pub(crate) fn give_back(ns: OwnedFd) {
    let mut v = idle();
    if v.len() < MAX_IDLE {
        v.push(ns);
    }
}

/// The network namespace of `pid` (our unreaped child), to keep after its job.
pub(crate) fn of_child(pid: i32) -> Option<OwnedFd> {
    std::fs::File::open(format!("/proc/{pid}/ns/net"))
        .ok()
        .map(OwnedFd::from)
}
