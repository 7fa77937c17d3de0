//! What runs beside the store's handles: the group-commit thread, and the wait for sled to let
//! go of its folder when the store is dropped.

use std::sync::mpsc as std_mpsc;

use tokio::sync::oneshot;

use super::FlushObserver;
use crate::store::{StoreError, StoreResult};

/// One `sync` caller waiting for a flush.
pub(super) type Waiter = oneshot::Sender<StoreResult<()>>;

/// The group-commit thread: takes every waiter queued so far, flushes once, wakes them all;
/// ends when the store drops its sender.
pub(super) fn group_commit(
    db: sled::Db,
    rx: std_mpsc::Receiver<Waiter>,
    observer: Option<FlushObserver>,
) {
    while let Ok(first) = rx.recv() {
        let mut waiters = vec![first];
        while let Ok(w) = rx.try_recv() {
            waiters.push(w);
        }
        let started = std::time::Instant::now();
        let result = db.flush().map(|_| ());
        if let Some(obs) = &observer {
            obs(started.elapsed(), waiters.len());
        }
        for w in waiters {
            let r = match &result {
                Ok(()) => Ok(()),
                Err(e) => Err(StoreError::Backend {
                    op: "flush",
                    message: e.to_string(),
                }),
            };
            let _ = w.send(r);
        }
    }
}

/// Waits on drop (a second at most) until nothing holds the lock of sled's database file.
/// sled's IO pool finishes a log write it started after the write is reported, holding the
/// file (and its lock) a moment past the last handle's drop; waiting here means a dropped
/// store's folder can be opened again at once.
pub(super) struct LockRelease(pub(super) std::path::PathBuf);

impl Drop for LockRelease {
    fn drop(&mut self) {
        let Ok(file) = std::fs::File::open(&self.0) else {
            return;
        };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(1);
        // sled takes an exclusive `flock` on the file: a shared one succeeds once it is gone.
        while file.try_lock_shared().is_err() && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        let _ = file.unlock();
    }
}
