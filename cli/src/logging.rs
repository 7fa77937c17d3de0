//! One `install` for tracing: verbosity from `-v`, `RUST_LOG` through `EnvFilter`, logs to
//! stderr, `--log-format json` for machines.

use tracing_subscriber::EnvFilter;

/// Installs the global subscriber.
pub fn install(verbose: u8, format: &str) {
    let default = match verbose {
        0 => "warn,cmdx_hub=info,cmdx_agent=info,cmdx=info",
        1 => "info",
        2 => "debug",
        _ => "trace",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    if format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}
