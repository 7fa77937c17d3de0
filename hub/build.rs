//! Builds the dashboard (`web/`) with npm and Vite into `OUT_DIR` and generates the table of
//! embedded assets the hub serves at `/`. Runs `npm ci` when `node_modules` is missing or older
//! than `package-lock.json`; reruns only when the dashboard's sources change. Needs Node 20 and
//! npm (the README's set-up). `CMDX_WEB_DIST=DIR` embeds a prebuilt bundle instead.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("manifest dir"));
    let web = manifest.join("..").join("web");
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("out dir"));
    println!("cargo:rerun-if-env-changed=CMDX_WEB_DIST");
    for p in [
        "src",
        "index.html",
        "package.json",
        "package-lock.json",
        "vite.config.ts",
        "tsconfig.json",
    ] {
        println!("cargo:rerun-if-changed={}", web.join(p).display());
    }
    let dist = match std::env::var("CMDX_WEB_DIST") {
        Ok(d) if !d.is_empty() => PathBuf::from(d),
        _ => build(&web, &out.join("dist")),
    };
    let mut files = Vec::new();
    collect(&dist, &dist, &mut files);
    files.sort();
    assert!(
        files.iter().any(|(rel, _)| rel == "/index.html"),
        "dashboard build produced no index.html in {}",
        dist.display()
    );
    let mut code = String::from(
        "/// Embedded dashboard files: (URL path, bytes, content type).\npub static ASSETS: &[(&str, &[u8], &str)] = &[\n",
    );
    for (rel, abs) in &files {
        let _ = writeln!(
            code,
            "    ({rel:?}, include_bytes!({:?}), {:?}),",
            abs.display().to_string(),
            mime(rel)
        );
    }
    code.push_str("];\n");
    std::fs::write(out.join("web_assets.rs"), code).expect("write web_assets.rs");
}

fn build(web: &Path, dist: &Path) -> PathBuf {
    // Several cargo processes (check, build, test) may run this at once: serialize on a lock.
    let lock = std::fs::File::create(web.join(".build.lock")).expect("create web/.build.lock");
    lock.lock().expect("lock web/.build.lock");
    let stamp = web.join("node_modules").join(".package-lock.json");
    let lockfile = web.join("package-lock.json");
    let stale = match (std::fs::metadata(&stamp), std::fs::metadata(&lockfile)) {
        (Ok(s), Ok(l)) => match (s.modified(), l.modified()) {
            (Ok(s), Ok(l)) => s < l,
            _ => true,
        },
        _ => true,
    };
    if stale {
        run(
            Command::new("npm")
                .args(["ci", "--no-audit", "--no-fund", "--loglevel=error"])
                .current_dir(web),
            "npm ci",
        );
    }
    run(
        Command::new("npx")
            .args([
                "--no-install",
                "vite",
                "build",
                "--logLevel",
                "warn",
                "--emptyOutDir",
                "--outDir",
            ])
            .arg(dist)
            .current_dir(web),
        "vite build",
    );
    dist.to_path_buf()
}

fn run(cmd: &mut Command, what: &str) {
    let status = cmd.status().unwrap_or_else(|e| {
        panic!("{what} could not start ({e}): building the dashboard needs Node 20 and npm on PATH")
    });
    assert!(status.success(), "{what} failed with {status}");
}

fn collect(root: &Path, dir: &Path, out: &mut Vec<(String, PathBuf)>) {
    let entries =
        std::fs::read_dir(dir).unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()));
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            collect(root, &path, out);
        } else if let Ok(rel) = path.strip_prefix(root) {
            let rel = format!("/{}", rel.to_string_lossy().replace('\\', "/"));
            out.push((rel, path.canonicalize().unwrap_or(path)));
        }
    }
}

fn mime(path: &str) -> &'static str {
    match path.rsplit('.').next().unwrap_or("") {
        "html" => "text/html; charset=utf-8",
        "js" | "mjs" => "text/javascript; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "json" | "map" => "application/json",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "ico" => "image/x-icon",
        "woff2" => "font/woff2",
        "txt" => "text/plain; charset=utf-8",
        _ => "application/octet-stream",
    }
}
