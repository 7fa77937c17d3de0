//! End-to-end tests of the hub through real processes, sockets and sled on disk.

mod agent_real;
mod artifacts;
mod attacks;
mod bad_input;
mod cli;
mod dev;
mod durability;
mod fencing;
mod flow;
mod hardening;
mod legacy;
mod ops;
mod original_worker;
mod packaging;
mod ratelimit;
mod relay;
mod security;
mod sessions;
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
