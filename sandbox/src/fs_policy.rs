//! The landlock ruleset of a job, built in the parent and enforced in the child.
//!
//! Handled (denied unless granted): every filesystem access right of the kernel's ABI, TCP
//! bind/connect when the job has no network (ABI 4+), and the abstract-unix-socket and
//! signal scopes (ABI 6+): the job cannot connect to a host abstract socket nor signal any
//! process outside its own landlock domain.

use std::os::fd::OwnedFd;

use landlock::{
    ABI, Access, AccessFs, AccessNet, CompatLevel, Compatible, PathBeneath, Ruleset, RulesetAttr,
    RulesetCreated, RulesetCreatedAttr, Scope, path_beneath_rules,
};

use crate::Spec;
use crate::error::Result;

/// Device files every job may read and write (as files, not their directories).
const DEVICES: [&str; 5] = [
    "/dev/null",
    "/dev/zero",
    "/dev/full",
    "/dev/random",
    "/dev/urandom",
];

/// Build the ruleset for `spec` against the kernel ABI `abi`.
///
/// With a private root (`root`: the template's `/`), reads are granted on that root as a
/// whole (it holds nothing but what the job is meant to see; the rule covers the job's own
/// `/proc` and `/dev` mounted under it, since landlock walks up through mount points) and
/// writes on the sources of the read-write binds (bind mounts share their inodes).
/// Otherwise `spec.read_only_paths` and `spec.read_write_paths`.
///
/// With a terminal (`terminal`: the job's devpts instance, or the slave itself when it is
/// the host's), file rights (read, write, ioctl) on it and on `/dev/tty`, so the job can
/// reopen its own terminal (`/dev/stdout`, `/dev/tty`) and, on its own instance, open more;
/// nothing else on a devpts is reachable.
///
/// With `strict`, every requested right must be supported (`HardRequirement`), otherwise the
/// build fails here in the parent instead of silently weakening in the child.
pub(crate) fn build(
    abi: ABI,
    spec: &Spec,
    strict: bool,
    root: Option<&OwnedFd>,
    terminal: Option<&OwnedFd>,
) -> Result<RulesetCreated> {
    let level = if strict {
        CompatLevel::HardRequirement
    } else {
        CompatLevel::BestEffort
    };
    let mut rs = Ruleset::default()
        .set_compatibility(level)
        .handle_access(AccessFs::from_all(abi))?;
    if !spec.network && abi >= ABI::V4 {
        rs = rs.handle_access(AccessNet::from_all(abi))?;
    }
    if abi >= ABI::V6 {
        rs = rs.scope(Scope::from_all(abi))?;
    }
    let created = rs.create()?;
    let created = match (root, &spec.root) {
        (Some(fd), Some(r)) => created
            .add_rule(PathBeneath::new(fd, AccessFs::from_read(abi)))?
            .add_rules(path_beneath_rules(
                r.read_write.iter().map(|b| &b.source),
                AccessFs::from_all(abi),
            ))?,
        _ => created
            .add_rules(path_beneath_rules(
                &spec.read_only_paths,
                AccessFs::from_read(abi),
            ))?
            .add_rules(path_beneath_rules(
                &spec.read_write_paths,
                AccessFs::from_all(abi),
            ))?,
    };
    let created = created.add_rules(path_beneath_rules(DEVICES, AccessFs::from_file(abi)))?;
    Ok(match terminal {
        Some(fd) => created
            .add_rule(PathBeneath::new(fd, AccessFs::from_file(abi)))?
            .add_rules(path_beneath_rules(["/dev/tty"], AccessFs::from_file(abi)))?,
        None => created,
    })
}
