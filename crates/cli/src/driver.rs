//! `ember driver`: a cluster's driver process. Executors register with it, clients
//! (`--master ember://HOST:PORT`) send it their queries.

use std::path::PathBuf;

use anyhow::{Context, Result};
use ember_core::rpc::Security;
use ember_driver::Session;

#[derive(Debug, clap::Args)]
pub struct DriverArgs {
    /// Address of the driver's gRPC service, for executors and clients.
    #[arg(long, default_value = "127.0.0.1:7077")]
    bind: String,

    /// File holding the cluster's shared secret (else $EMBER_SECRET, else none).
    #[arg(long, value_name = "FILE")]
    secret_file: Option<PathBuf>,

    /// Set a configuration key for every job, `ember.*` or `datafusion.*` (repeatable).
    #[arg(short = 'c', long = "config", value_name = "KEY=VALUE", value_parser = crate::sql::parse_config_arg)]
    config: Vec<(String, String)>,
}

/// Serves until Ctrl-C or SIGTERM.
pub async fn run(args: DriverArgs) -> Result<()> {
    let security = Security::from_file_or_env(args.secret_file.as_deref())?;
    let secured = security.has_secret();
    let mut builder = Session::builder()
        .master(format!("driver://{}", args.bind))
        .app_name("ember driver")
        .security(security);
    for (key, value) in &args.config {
        builder = builder.config(key, value);
    }
    let session = builder.build().context("starting the driver")?;
    let address = session.driver_address().unwrap_or_default().to_string();
    eprintln!(
        "driver listening at {address}{}; executors: ember executor --driver {address}; clients: --master {}",
        if secured { " (secret required)" } else { "" },
        address.replace("http://", "ember://")
    );
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate.recv() => {}
    }
    eprintln!("driver stopping");
    drop(session);
    Ok(())
}
