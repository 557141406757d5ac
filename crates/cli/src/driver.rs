//! `ember driver`: a cluster's driver process. Executors register with it, clients
//! (`--master ember://HOST:PORT`) send it their queries.

use anyhow::{Context, Result};
use ember_driver::Session;

use crate::security::SecurityArgs;

#[derive(Debug, clap::Args)]
pub struct DriverArgs {
    /// Address of the driver's gRPC service, for executors and clients.
    #[arg(long, default_value = "127.0.0.1:7077")]
    bind: String,

    /// Also serve Arrow Flight SQL at this address (e.g. 127.0.0.1:32010), for ADBC,
    /// JDBC and BI tools; with a secret, clients authenticate with it.
    #[arg(long = "flight-sql", value_name = "HOST:PORT")]
    flight_sql: Option<String>,

    #[command(flatten)]
    security: SecurityArgs,

    #[command(flatten)]
    ui: crate::ui_args::UiArgs,

    /// Set a configuration key for every job, `ember.*` or `datafusion.*` (repeatable).
    #[arg(short = 'c', long = "config", value_name = "KEY=VALUE", value_parser = crate::sql::parse_config_arg)]
    config: Vec<(String, String)>,
}

/// Serves until Ctrl-C or SIGTERM.
pub async fn run(args: DriverArgs) -> Result<()> {
    let security = args.security.security()?;
    let secured = match (security.has_secret(), security.has_tls()) {
        (true, true) => " (TLS, secret required)",
        (true, false) => " (secret required)",
        (false, true) => " (TLS)",
        (false, false) => "",
    };
    let mut builder = args.ui.apply(
        Session::builder()
            .master(format!("driver://{}", args.bind))
            .app_name("ember driver")
            .security(security),
    );
    for (key, value) in &args.config {
        builder = builder.config(key, value);
    }
    if let Some(bind) = &args.flight_sql {
        builder = builder.flight_sql(bind);
    }
    let session = builder.build().context("starting the driver")?;
    let address = session.driver_address().unwrap_or_default().to_string();
    eprintln!(
        "driver listening at {address}{secured}; executors: ember executor --driver {address}; clients: --master ember://{}",
        address.split("://").nth(1).unwrap_or_default()
    );
    if let Some(flight) = session.flight_sql_address() {
        let scheme = if secured.contains("TLS") {
            "grpc+tls"
        } else {
            "grpc"
        };
        eprintln!("Flight SQL at {scheme}://{flight}");
    }
    if let Some(ui) = session.ui_address() {
        eprintln!("web UI at http://{ui}/ (REST API under /api/v1, metrics at /metrics)");
    }
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
