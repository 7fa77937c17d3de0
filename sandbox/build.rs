//! Builds `cmdx-init` (`init/cmdx_init.rs`), the PID 1 of every job's PID namespace, as a
//! freestanding static executable that the crate embeds (see `src/init.rs`).
//!
//! It is compiled by the same `rustc` for the same target, but on its own: no standard
//! library, no libc, no start files, a static non-PIE executable of a few KiB, so that its
//! `exec` costs almost nothing on every job start. Only x86_64 and aarch64 are supported
//! (the entry point and the system call instruction are written per architecture).

use std::env;
use std::path::PathBuf;
use std::process::Command;

fn main() {
    let src = "init/cmdx_init.rs";
    println!("cargo::rerun-if-changed={src}");
    println!("cargo::rerun-if-changed=build.rs");
    let arch = env::var("CARGO_CFG_TARGET_ARCH").expect("cargo sets CARGO_CFG_TARGET_ARCH");
    assert!(
        arch == "x86_64" || arch == "aarch64",
        "cmdx-sandbox's job init supports x86_64 and aarch64, not {arch}"
    );
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR")).join("cmdx-init");
    let target = env::var("TARGET").expect("cargo sets TARGET");
    let rustc = env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let mut cmd = Command::new(rustc);
    cmd.args([
        "--edition",
        "2024",
        "--crate-type",
        "bin",
        "--crate-name",
        "cmdx_init",
    ])
    .args(["--target", &target, "-D", "warnings"])
    .args([
        "-C",
        "opt-level=2",
        "-C",
        "panic=abort",
        "-C",
        "debuginfo=0",
    ])
    .args(["-C", "strip=symbols", "-C", "relocation-model=static"])
    .args(["-C", "link-arg=-nostartfiles", "-C", "link-arg=-nostdlib"])
    .args(["-C", "link-arg=-static", "-C", "link-arg=-no-pie"]);
    let linker_var = format!(
        "CARGO_TARGET_{}_LINKER",
        target.to_uppercase().replace(['-', '.'], "_")
    );
    if let Some(linker) = env::var_os(&linker_var) {
        let mut arg = std::ffi::OsString::from("linker=");
        arg.push(linker);
        cmd.arg("-C").arg(arg);
    }
    cmd.arg("-o").arg(&out).arg(src);
    let status = cmd.status().expect("run rustc for cmdx-init");
    assert!(status.success(), "building cmdx-init failed: {status}");
}
