//! `--ui-port` and `--no-ui`: the web UI, REST API and `/metrics` of a command that
//! runs jobs.

use ember_driver::SessionBuilder;

#[derive(Debug, clap::Args)]
pub struct UiArgs {
    /// Where the web UI, the REST API and /metrics listen: a port (on 127.0.0.1) or
    /// HOST:PORT; a busy port is followed by the next ones.
    #[arg(long, default_value = "4040", value_name = "[HOST:]PORT")]
    ui_port: String,

    /// Serve no web UI.
    #[arg(long)]
    no_ui: bool,
}

impl UiArgs {
    pub fn apply(&self, builder: SessionBuilder) -> SessionBuilder {
        if self.no_ui {
            return builder;
        }
        let bind = if self.ui_port.contains(':') {
            self.ui_port.clone()
        } else {
            format!("127.0.0.1:{}", self.ui_port)
        };
        builder.ui(bind)
    }
}
