//! `cmdx`: the one binary. Thin: parses flags, installs tracing, and calls the libraries.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};

mod logging;

/// cmdx: run commands on a cluster of sandboxed workers.
#[derive(Parser)]
#[command(name = "cmdx", version, about)]
struct Cli {
    /// More log detail (-v info, -vv debug, -vvv trace); RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    /// Log format.
    #[arg(long, global = true, value_parser = ["text", "json"], default_value = "text")]
    log_format: String,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the hub (HTTP + WebSocket server with its sled store).
    Hub(HubArgs),
}

#[derive(clap::Args)]
struct HubArgs {
    /// Address to listen on.
    #[arg(long, env = "CMDX_LISTEN", default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Data folder (store, blobs, secrets).
    #[arg(long, env = "CMDX_DATA", default_value = "./cmdx-data")]
    data: PathBuf,
    /// Reconnect grace for disconnected workers, seconds.
    #[arg(long, env = "CMDX_RECONNECT_GRACE_SECS")]
    reconnect_grace_secs: Option<u64>,
    /// Requests per minute per IP on user routes (0 disables).
    #[arg(long, env = "CMDX_RATE_LIMIT_PER_MIN")]
    rate_limit_per_min: Option<u32>,
    /// Login attempts per minute per IP (0 disables).
    #[arg(long, env = "CMDX_LOGIN_RATE_LIMIT_PER_MIN")]
    login_rate_limit_per_min: Option<u32>,
    /// Largest upload in bytes.
    #[arg(long, env = "CMDX_MAX_UPLOAD_BYTES")]
    max_upload_bytes: Option<u64>,
    /// Output kept per job in bytes.
    #[arg(long, env = "CMDX_OUTPUT_CAP_BYTES")]
    output_cap_bytes: Option<u64>,
    /// Largest WebSocket message in bytes.
    #[arg(long, env = "CMDX_MAX_WS_MESSAGE_BYTES")]
    max_ws_message_bytes: Option<usize>,
    /// Shared secret of the original system's worker JWTs (enables them).
    #[arg(long, env = "CMDX_LEGACY_WORKER_JWT_SECRET", hide_env_values = true)]
    legacy_worker_jwt_secret: Option<String>,
    /// Admit unauthenticated legacy workers from these CIDRs (comma-separated; off by default).
    #[arg(long, env = "CMDX_LEGACY_OPEN_CIDRS", value_delimiter = ',')]
    legacy_open_cidrs: Vec<String>,
    /// Default attempts before worker_lost.
    #[arg(long, env = "CMDX_MAX_ATTEMPTS")]
    max_attempts: Option<u32>,
    /// Extra origins allowed for browser WebSockets (comma-separated).
    #[arg(long, env = "CMDX_ALLOWED_ORIGINS", value_delimiter = ',')]
    allowed_origins: Vec<String>,
}

impl HubArgs {
    fn config(&self) -> cmdx_hub::HubConfig {
        let mut c = cmdx_hub::HubConfig {
            data_dir: self.data.clone(),
            ..Default::default()
        };
        if let Some(v) = self.reconnect_grace_secs {
            c.reconnect_grace_secs = v;
        }
        if let Some(v) = self.rate_limit_per_min {
            c.rate_limit_per_min = v;
        }
        if let Some(v) = self.login_rate_limit_per_min {
            c.login_rate_limit_per_min = v;
        }
        if let Some(v) = self.max_upload_bytes {
            c.max_upload_bytes = v;
        }
        if let Some(v) = self.output_cap_bytes {
            c.output_cap_bytes = v;
        }
        if let Some(v) = self.max_ws_message_bytes {
            c.max_ws_message_bytes = v;
        }
        if let Some(v) = self.max_attempts {
            c.default_max_attempts = v;
        }
        c.legacy_worker_jwt_secret = self.legacy_worker_jwt_secret.clone();
        c.legacy_open_cidrs = self.legacy_open_cidrs.clone();
        c.allowed_origins = self.allowed_origins.clone();
        c
    }
}

fn main() {
    let cli = Cli::parse();
    logging::install(cli.verbose, &cli.log_format);
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cmdx: cannot start the runtime: {e}");
            std::process::exit(125);
        }
    };
    let result = rt.block_on(async move {
        match cli.cmd {
            Cmd::Hub(args) => run_hub(args).await,
        }
    });
    if let Err(e) = result {
        eprintln!("cmdx: {e:#}");
        std::process::exit(125);
    }
}

/// Resolves on SIGTERM or SIGINT.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

async fn run_hub(args: HubArgs) -> anyhow::Result<()> {
    let config = args.config();
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let addr = listener.local_addr()?;
    let hub = cmdx_hub::open(config).await.context("opening the hub")?;
    // Tests and scripts read this line to learn the port.
    println!("cmdx hub listening on http://{addr}");
    cmdx_hub::serve(hub, listener, shutdown_signal())
        .await
        .context("serving")?;
    Ok(())
}
