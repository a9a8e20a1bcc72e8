//! The TLS listener: `listener.tls` and `[tls]` ([`crate::config::TlsConfig`]) turned
//! into the shards' [`TlsListener`] at start, and its files read again on SIGHUP.
//!
//! The handshake, the certificate swap and the client certificate's user name are in
//! [`cutie_shard::tls`]; the connection path in `cutie_shard::runtime`.

use crate::config::Config;
use cutie_shard::tls::{TlsError, TlsListener, TlsServer, TlsSettings};

/// The TLS listener the configuration asks for, its files loaded; `None` without
/// `listener.tls`. An error names the key and the file (exit code 2).
pub fn load(config: &Config) -> Result<Option<TlsListener>, TlsError> {
    let Some(listen) = config.listener.tls else {
        return Ok(None);
    };
    let tls = &config.tls;
    // `Config::validate` has checked that both are set when `listener.tls` is.
    let (Some(cert_file), Some(key_file)) = (&tls.cert_file, &tls.key_file) else {
        return Err(TlsError::Invalid {
            key: "tls.cert_file",
            path: Default::default(),
            reason: "a TLS listener needs tls.cert_file and tls.key_file".to_owned(),
        });
    };
    let server = TlsServer::load(TlsSettings {
        cert_file: cert_file.clone(),
        key_file: key_file.clone(),
        client_ca_file: tls.client_ca_file.clone(),
        use_identity_as_username: tls.use_identity_as_username,
    })?;
    tracing::info!(
        cert_file = %cert_file.display(),
        client_ca_file = ?tls.client_ca_file.as_ref().map(|p| p.display().to_string()),
        use_identity_as_username = tls.use_identity_as_username,
        "TLS certificate loaded"
    );
    Ok(Some(TlsListener { listen, server }))
}

/// SIGHUP: reads the certificate, key and client CA again; new handshakes use them, open
/// connections keep theirs. A file that does not load keeps the ones in force.
pub fn reload(server: &TlsServer) {
    match server.reload() {
        Ok(()) => tracing::info!(
            cert_file = %server.settings().cert_file.display(),
            "TLS certificate reloaded"
        ),
        Err(error) => tracing::error!(
            %error,
            "TLS certificate not reloaded; keeping the one in force"
        ),
    }
}
