//! `ember history`: serves the web UI and REST API of the applications whose event
//! logs (`ember.eventlog.dir`) are in a directory, as Spark's history server.

use std::path::PathBuf;

use anyhow::{Context, Result};

#[derive(Debug, clap::Args)]
pub struct HistoryArgs {
    /// The event log directory (what `ember.eventlog.dir` named).
    #[arg(long, value_name = "DIR")]
    dir: PathBuf,

    /// Where the UI listens: a port (on 127.0.0.1) or HOST:PORT; a busy port is
    /// followed by the next ones.
    #[arg(long, default_value = "18080", value_name = "[HOST:]PORT")]
    ui_port: String,
}

/// Serves until Ctrl-C or SIGTERM.
pub async fn run(args: HistoryArgs) -> Result<()> {
    let bind = if args.ui_port.contains(':') {
        args.ui_port.clone()
    } else {
        format!("127.0.0.1:{}", args.ui_port)
    };
    let server = ember_driver::serve_history(&args.dir, &bind)
        .with_context(|| format!("serving the history of {}", args.dir.display()))?;
    eprintln!(
        "history of {} at http://{}/ (REST API under /api/v1/applications)",
        args.dir.display(),
        server.address
    );
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate.recv() => {}
    }
    drop(server);
    Ok(())
}
