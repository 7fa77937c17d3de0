//! Integration tests of the agent library against a fake hub, with real sandboxed jobs.
//!
//! These tests need root (the sandbox creates cgroups, network namespaces, tmpfs workspaces
//! and drops to unprivileged uids); the agent runs in strict sandbox mode and fails loudly
//! where a layer is missing.

#![forbid(unsafe_code)]

mod helpers;
mod jobs;
mod protocol;
mod zipkit;
mod zips;
