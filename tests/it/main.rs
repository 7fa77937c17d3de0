//! End-to-end tests of the hub through real processes, sockets, sled on disk and a real
//! PostgreSQL server.

/// Declares a test `$sled` running `$body(Backend::Sled)` and a test `$pg` running
/// `$body(Backend::Postgres)`: the suites about durability, dispatch, fencing and relay hold on
/// both stores.
macro_rules! on_both_stores {
    ($sled:ident, $pg:ident, $body:ident) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $sled() {
            $body($crate::Backend::Sled).await
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $pg() {
            $body($crate::Backend::Postgres).await
        }
    };
}

mod agent_real;
mod artifacts;
mod attacks;
mod bad_input;
mod cli;
mod cluster;
mod dev;
mod durability;
mod fencing;
mod flow;
mod hardening;
mod images;
mod legacy;
mod log_search;
mod ops;
mod original_worker;
mod packaging;
mod pty;
mod ratelimit;
mod relay;
mod resize;
mod scheduling;
mod security;
mod sessions;
mod store;
mod tls;
mod worker_identity;

/// Flags for a hub tuned for tests: short reconnect grace, no rate limits.
pub const FAST: &[&str] = &[
    "--reconnect-grace-secs",
    "2",
    "--rate-limit-per-min",
    "0",
    "--read-rate-limit-per-sec",
    "0",
    "--login-rate-limit-per-min",
    "0",
];

/// Which store a hub under test keeps its records in.
#[derive(Clone, Copy, Debug)]
pub enum Backend {
    /// sled in the hub's data folder (the default).
    Sled,
    /// A database of its own on the suite's private PostgreSQL server.
    Postgres,
}

impl Backend {
    /// Starts a hub with [`FAST`] flags and `extra` on this store.
    pub async fn hub(self, extra: &[&str]) -> cmdx_e2e::HubProc {
        let mut flags: Vec<&str> = FAST.to_vec();
        flags.extend(extra);
        let url;
        if let Backend::Postgres = self {
            url = cmdx_e2e::pg::fresh_database("e2e").expect("private PostgreSQL");
            flags.extend(["--store", url.as_str()]);
        }
        cmdx_e2e::HubProc::start(&flags).await
    }
}
