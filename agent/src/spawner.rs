//! Starting sandboxed jobs on threads of their own, never on the async runtime's.
//!
//! `cmdx_sandbox::spawn` blocks its thread while the child sets itself up (on cgroup v1,
//! joining the job's cgroups waits for an RCU grace period; under a private root the job's
//! init reports the program's `exec`), and `PR_SET_PDEATHSIG` ties each job to the thread
//! that started it. So a runtime worker must not do it (every other task of the agent would
//! stall meanwhile: with two cores, two slow starts stop the agent), nor tokio's blocking pool
//! (its idle threads exit, and the jobs they started would be killed with them). One thread
//! per slot lives as long as the agent and does nothing else; concurrent starts also share
//! the kernel's grace periods.

use std::sync::{Arc, Mutex, mpsc};

use cmdx_sandbox::{Child, Error, Spec};
use tokio::sync::oneshot;

struct Request {
    spec: Spec,
    reply: oneshot::Sender<Result<Child, Error>>,
}

/// The agent's starter threads.
pub(crate) struct Spawner {
    tx: Mutex<mpsc::Sender<Request>>,
}

impl Spawner {
    /// Starts `threads` starter threads that register jobs with `runtime`'s reactor.
    pub(crate) fn new(threads: u32, runtime: tokio::runtime::Handle) -> std::io::Result<Self> {
        let (tx, rx) = mpsc::channel::<Request>();
        let rx = Arc::new(Mutex::new(rx));
        for i in 0..threads.max(1) {
            let (rx, runtime) = (rx.clone(), runtime.clone());
            std::thread::Builder::new()
                .name(format!("cmdx-job-start-{i}"))
                .spawn(move || {
                    let _entered = runtime.enter();
                    loop {
                        // One thread waits in `recv` at a time; the others wait for the lock.
                        let next = rx.lock().unwrap_or_else(|e| e.into_inner()).recv();
                        let Ok(req) = next else { return };
                        // A job whose requester went away is dropped here, which kills it.
                        let _ = req.reply.send(cmdx_sandbox::spawn(&req.spec));
                    }
                })?;
        }
        Ok(Self { tx: Mutex::new(tx) })
    }

    /// Starts `spec` on a starter thread.
    pub(crate) async fn spawn(&self, spec: Spec) -> Result<Child, Error> {
        let gone = |program: std::path::PathBuf| Error::Spawn {
            program,
            step: "hand to a starter thread",
            source: std::io::Error::other("the agent's starter threads are gone"),
        };
        let (reply, rx) = oneshot::channel();
        let program = spec.program.clone();
        self.tx
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .send(Request { spec, reply })
            .map_err(|e| gone(e.0.spec.program))?;
        rx.await.map_err(|_| gone(program))?
    }
}
