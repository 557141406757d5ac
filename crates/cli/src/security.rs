//! The flags every cluster command shares: the secret and TLS.

use std::path::PathBuf;

use anyhow::{Result, bail};
use ember_core::rpc::Security;

#[derive(Debug, Clone, Default, clap::Args)]
pub struct SecurityArgs {
    /// File holding the cluster's shared secret (else $EMBER_SECRET, else none).
    #[arg(long, value_name = "FILE")]
    pub secret_file: Option<PathBuf>,

    /// TLS certificate (PEM) this process serves with; needs --tls-key.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// TLS private key (PEM) of --tls-cert.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// Certificate (PEM) that servers' certificates must be signed by, or be
    /// (default with --tls-cert: that certificate). Alone, a client turns TLS on.
    #[arg(long, value_name = "FILE")]
    pub tls_ca: Option<PathBuf>,
}

impl SecurityArgs {
    pub fn security(&self) -> Result<Security> {
        let security = Security::from_file_or_env(self.secret_file.as_deref())?;
        Ok(match (&self.tls_cert, &self.tls_key, &self.tls_ca) {
            (Some(cert), Some(key), ca) => security.with_tls(cert, key, ca.as_deref())?,
            (None, None, Some(ca)) => security.with_tls_client(ca)?,
            (None, None, None) => security,
            _ => bail!("--tls-cert and --tls-key go together"),
        })
    }
}
