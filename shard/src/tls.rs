//! TLS for the MQTT listener: the server configuration, its reloading, and who a client
//! certificate says the client is.
//!
//! - [`TlsSettings`]: the files (PEM certificate chain and key, optional client CA) and
//!   whether the client certificate's CN becomes the MQTT user name.
//! - [`TlsServer`]: the rustls server configuration built from them, shared by every
//!   shard. [`TlsServer::reload`] (SIGHUP) builds a new one from the files and swaps it in;
//!   a file that does not load leaves the previous one in place. The configuration is
//!   read once per handshake (one uncontended read lock and an `Arc` clone), never per
//!   message, and a connection keeps the configuration it was made with, so a reload
//!   drops nothing.
//! - [`CertificateUser`]: `use_identity_as_username`, as Mosquitto has it: the subject CN
//!   of the verified client certificate replaces the CONNECT's user name (and the
//!   password is cleared: the certificate is the credential).
//!
//! TLS 1.2 and 1.3, rustls with the `ring` provider. With `client_ca_file` every client
//! must present a certificate that chains to one of its CAs (mTLS); without it none is
//! asked for.
//!
//! The whole `ServerConfig` is swapped rather than only the certificate (a swappable
//! `ResolvesServerCert`), so that the client CA is reloaded by the same step; the price is
//! that a reload also empties the TLS session-resumption cache, so each client makes one
//! full handshake after it.
//!
//! The connection path (handshake, then a proxy to a socketpair that the plain-TCP code
//! serves) is in `runtime/tls_proxy.rs`.

use bytestring::ByteString;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ServerConnection, WebPkiClientVerifier};
use rustls::{RootCertStore, ServerConfig};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};
use x509_parser::certificate::X509Certificate;
use x509_parser::prelude::FromDer;

/// Largest PEM file read (a certificate chain, a key, a CA bundle): a bound, not a
/// format limit; a system CA bundle is about 200 KiB.
pub const PEM_FILE_BYTES_MAX: u64 = 16 * 1024 * 1024;

/// Where the TLS listener's certificate and key come from, and how client certificates
/// are treated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSettings {
    /// PEM: the server certificate first, then its intermediates.
    pub cert_file: PathBuf,
    /// PEM: the private key of the first certificate (PKCS#8, PKCS#1 or SEC1).
    pub key_file: PathBuf,
    /// PEM: CA certificates that client certificates must chain to. `Some`: every client
    /// must present a valid certificate (mTLS); `None`: none is asked for.
    pub client_ca_file: Option<PathBuf>,
    /// The verified client certificate's subject CN becomes the MQTT user name (see
    /// [`CertificateUser`]). Needs `client_ca_file`.
    pub use_identity_as_username: bool,
}

/// The TLS listener of a broker: where, and with which configuration.
#[derive(Debug, Clone)]
pub struct TlsListener {
    /// Address every shard binds (SO_REUSEPORT); port 0 picks one.
    pub listen: std::net::SocketAddr,
    /// The configuration, reloadable while the broker runs.
    pub server: Arc<TlsServer>,
}

/// A TLS file that cannot be used. Each variant names the configuration key and the
/// file.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The file could not be read.
    #[error("cannot read {key} {}: {source}", path.display())]
    Read {
        /// The configuration key that names the file (`tls.cert_file`, ...).
        key: &'static str,
        /// The file.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// The file was read but does not hold what it should.
    #[error("{key} {}: {reason}", path.display())]
    Invalid {
        /// The configuration key that names the file.
        key: &'static str,
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// `use_identity_as_username` without `client_ca_file`: there would be no
    /// certificate to take the name from.
    #[error("tls.use_identity_as_username needs tls.client_ca_file (client certificates)")]
    IdentityWithoutClientCa,
}

/// The TLS server configuration every shard uses; see the module docs.
#[derive(Debug)]
pub struct TlsServer {
    settings: TlsSettings,
    current: RwLock<Arc<ServerConfig>>,
}

impl TlsServer {
    /// Loads the files and builds the configuration.
    pub fn load(settings: TlsSettings) -> Result<Arc<TlsServer>, TlsError> {
        let config = build_config(&settings)?;
        Ok(Arc::new(TlsServer {
            settings,
            current: RwLock::new(Arc::new(config)),
        }))
    }

    /// Reads the files again and, if they load, makes new handshakes use them.
    /// Connections already made keep theirs. On error the previous configuration stays.
    pub fn reload(&self) -> Result<(), TlsError> {
        let config = Arc::new(build_config(&self.settings)?);
        // A panic while holding this lock cannot leave it half-written: it holds an Arc.
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = config;
        Ok(())
    }

    /// The configuration for a new handshake.
    pub fn config(&self) -> Arc<ServerConfig> {
        self.current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The settings it was loaded from.
    pub fn settings(&self) -> &TlsSettings {
        &self.settings
    }

    /// Whether the client certificate's CN is the MQTT user name.
    pub fn use_identity_as_username(&self) -> bool {
        self.settings.use_identity_as_username
    }
}

fn build_config(settings: &TlsSettings) -> Result<ServerConfig, TlsError> {
    if settings.use_identity_as_username && settings.client_ca_file.is_none() {
        return Err(TlsError::IdentityWithoutClientCa);
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cert_chain = read_certificates("tls.cert_file", &settings.cert_file)?;
    let key = read_private_key(&settings.key_file)?;

    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| TlsError::Invalid {
            key: "tls.cert_file",
            path: settings.cert_file.clone(),
            reason: format!("no usable TLS version: {e}"),
        })?;
    let builder = match &settings.client_ca_file {
        None => builder.with_no_client_auth(),
        Some(path) => {
            let mut roots = RootCertStore::empty();
            for cert in read_certificates("tls.client_ca_file", path)? {
                roots.add(cert).map_err(|e| TlsError::Invalid {
                    key: "tls.client_ca_file",
                    path: path.clone(),
                    reason: format!("not a usable CA certificate: {e}"),
                })?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| TlsError::Invalid {
                    key: "tls.client_ca_file",
                    path: path.clone(),
                    reason: e.to_string(),
                })?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    // Checks that the key is one the provider can use and that it belongs to the first
    // certificate.
    builder
        .with_single_cert(cert_chain, key)
        .map_err(|e| TlsError::Invalid {
            key: "tls.key_file",
            path: settings.key_file.clone(),
            reason: format!(
                "does not go with tls.cert_file {}: {e}",
                settings.cert_file.display()
            ),
        })
}

/// The file's bytes, at most [`PEM_FILE_BYTES_MAX`].
fn read_file(key: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    let read_error = |source| TlsError::Read {
        key,
        path: path.to_owned(),
        source,
    };
    let file = std::fs::File::open(path).map_err(read_error)?;
    let mut bytes = Vec::new();
    file.take(PEM_FILE_BYTES_MAX + 1)
        .read_to_end(&mut bytes)
        .map_err(read_error)?;
    if bytes.len() as u64 > PEM_FILE_BYTES_MAX {
        return Err(TlsError::Invalid {
            key,
            path: path.to_owned(),
            reason: format!("larger than {PEM_FILE_BYTES_MAX} bytes"),
        });
    }
    Ok(bytes)
}

/// Every `CERTIFICATE` block of a PEM file; at least one.
fn read_certificates(
    key: &'static str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bytes = read_file(key, path)?;
    let invalid = |reason: String| TlsError::Invalid {
        key,
        path: path.to_owned(),
        reason,
    };
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid(format!("not valid PEM: {e}")))?;
    if certs.is_empty() {
        return Err(invalid("holds no PEM CERTIFICATE block".to_owned()));
    }
    Ok(certs)
}

/// The first private key block of a PEM file.
fn read_private_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    const KEY: &str = "tls.key_file";
    let bytes = read_file(KEY, path)?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| TlsError::Invalid {
        key: KEY,
        path: path.to_owned(),
        reason: match e {
            rustls::pki_types::pem::Error::NoItemsFound => {
                "holds no PEM private key (PRIVATE KEY, RSA PRIVATE KEY or EC PRIVATE KEY)"
                    .to_owned()
            }
            other => format!("not valid PEM: {other}"),
        },
    })
}

/// What `use_identity_as_username` makes of a connection's client certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CertificateUser {
    /// The subject CN of the verified client certificate: the connection's MQTT user
    /// name, authenticated by the certificate (no password is checked, as in Mosquitto).
    Name(ByteString),
    /// No client certificate, or no CN that is a valid MQTT user name (UTF-8 without
    /// U+0000, at most 65535 bytes): the CONNECT is refused with return code 4 (bad user
    /// name or password), as Mosquitto does.
    Missing,
}

impl CertificateUser {
    /// The user a finished handshake's client certificate names.
    pub fn of(connection: &ServerConnection) -> CertificateUser {
        connection
            .peer_certificates()
            .and_then(|chain| chain.first())
            .and_then(|cert| common_name(cert.as_ref()))
            .map_or(CertificateUser::Missing, CertificateUser::Name)
    }
}

/// The first subject common name (OID 2.5.4.3) of a DER certificate, if it is a string
/// (UTF8String, PrintableString, IA5String or NumericString) and a valid MQTT user name.
/// Only certificates that rustls has verified reach this; x509-parser still checks every
/// length, and a certificate it cannot parse names no one.
pub fn common_name(certificate_der: &[u8]) -> Option<ByteString> {
    let (_, certificate) = X509Certificate::from_der(certificate_der).ok()?;
    let name = certificate
        .subject()
        .iter_common_name()
        .next()?
        .as_str()
        .ok()?;
    // An MQTT user name: a UTF-8 string of at most 65535 bytes, no U+0000
    // [MQTT-1.5.3-2]; an empty one names no one.
    if name.is_empty() || name.len() > usize::from(u16::MAX) || name.contains('\0') {
        return None;
    }
    Some(ByteString::from(name))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use rcgen::{CertificateParams, DistinguishedName, DnType, DnValue, KeyPair};

    fn certificate_with(dn: DistinguishedName) -> Vec<u8> {
        let mut params = CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
        params.distinguished_name = dn;
        let key = KeyPair::generate().unwrap();
        params.self_signed(&key).unwrap().der().to_vec()
    }

    fn dn(entries: &[(DnType, DnValue)]) -> DistinguishedName {
        let mut dn = DistinguishedName::new();
        for (kind, value) in entries {
            dn.push(kind.clone(), value.clone());
        }
        dn
    }

    #[test]
    fn common_name_is_read_from_a_utf8_string() {
        let der = certificate_with(dn(&[
            (
                DnType::CountryName,
                DnValue::PrintableString("DE".try_into().unwrap()),
            ),
            (
                DnType::OrganizationName,
                DnValue::Utf8String("cutie".into()),
            ),
            (DnType::CommonName, DnValue::Utf8String("sensor-ä1".into())),
        ]));
        assert_eq!(common_name(&der).as_deref(), Some("sensor-ä1"));
    }

    #[test]
    fn common_name_is_read_from_a_printable_string() {
        let der = certificate_with(dn(&[(
            DnType::CommonName,
            DnValue::PrintableString("device 7".try_into().unwrap()),
        )]));
        assert_eq!(common_name(&der).as_deref(), Some("device 7"));
    }

    /// Gives every attribute of type `from` in `der`'s names the type `to` (rcgen keeps
    /// one value per attribute type, so a second CN is made from another attribute).
    /// The signature no longer matches; nothing here checks it.
    fn retype_attributes(der: &mut [u8], from: [u8; 3], to: [u8; 3]) {
        let pattern = [0x06, 0x03, from[0], from[1], from[2]];
        let mut found = 0;
        for i in 0..der.len().saturating_sub(pattern.len()) {
            if der[i..i + pattern.len()] == pattern {
                der[i + 2..i + 5].copy_from_slice(&to);
                found += 1;
            }
        }
        // Issuer and subject: the certificate is self-signed.
        assert_eq!(found, 2);
    }

    const CN: [u8; 3] = [0x55, 0x04, 0x03];
    const OU: [u8; 3] = [0x55, 0x04, 0x0b];

    #[test]
    fn the_first_of_two_common_names_is_taken() {
        let mut der = certificate_with(dn(&[
            (DnType::OrganizationName, DnValue::Utf8String("org".into())),
            (DnType::CommonName, DnValue::Utf8String("first".into())),
            (
                DnType::OrganizationalUnitName,
                DnValue::Utf8String("second".into()),
            ),
        ]));
        assert_eq!(common_name(&der).as_deref(), Some("first"));
        retype_attributes(&mut der, OU, CN);
        assert_eq!(common_name(&der).as_deref(), Some("first"));

        // Only the first counts, even when the second would do.
        let mut der = certificate_with(dn(&[
            (
                DnType::OrganizationalUnitName,
                DnValue::BmpString("xy".try_into().unwrap()),
            ),
            (DnType::CommonName, DnValue::Utf8String("second".into())),
        ]));
        retype_attributes(&mut der, OU, CN);
        assert_eq!(common_name(&der), None);
    }

    #[test]
    fn common_names_of_other_string_types_name_no_one() {
        let der = certificate_with(dn(&[(
            DnType::CommonName,
            DnValue::BmpString("xy".try_into().unwrap()),
        )]));
        assert_eq!(common_name(&der), None);
        let der = certificate_with(dn(&[(
            DnType::CommonName,
            DnValue::UniversalString("xy".try_into().unwrap()),
        )]));
        assert_eq!(common_name(&der), None);
    }

    #[test]
    fn common_name_is_read_from_an_ia5_string_and_a_long_one_whole() {
        let der = certificate_with(dn(&[(
            DnType::CommonName,
            DnValue::Ia5String("mail@example.com".try_into().unwrap()),
        )]));
        assert_eq!(common_name(&der).as_deref(), Some("mail@example.com"));
        // Two length bytes.
        let long = "n".repeat(300);
        let der = certificate_with(dn(&[(
            DnType::CommonName,
            DnValue::Utf8String(long.clone()),
        )]));
        assert_eq!(common_name(&der).as_deref(), Some(long.as_str()));
    }

    #[test]
    fn a_certificate_without_common_name_names_no_one() {
        let der = certificate_with(dn(&[(
            DnType::OrganizationName,
            DnValue::Utf8String("cutie".into()),
        )]));
        assert_eq!(common_name(&der), None);
        let der = certificate_with(dn(&[(DnType::CommonName, DnValue::Utf8String("".into()))]));
        assert_eq!(common_name(&der), None);
        let der = certificate_with(dn(&[(
            DnType::CommonName,
            DnValue::Utf8String("nul\0inside".into()),
        )]));
        assert_eq!(common_name(&der), None);
    }

    #[test]
    fn truncated_or_damaged_certificates_never_panic() {
        let der = certificate_with(dn(&[(
            DnType::CommonName,
            DnValue::Utf8String("client".into()),
        )]));
        for end in 0..der.len() {
            let _ = common_name(&der[..end]);
        }
        for i in 0..der.len() {
            let mut damaged = der.clone();
            damaged[i] ^= 0xff;
            let _ = common_name(&damaged);
        }
        assert_eq!(common_name(&[]), None);
        assert_eq!(common_name(&[0x30, 0x84, 0xff, 0xff, 0xff, 0xff]), None);
    }

    /// A CA, and a server certificate and key signed by it, as PEM files in `dir`.
    fn write_server_files(dir: &Path, name: &str) -> TlsSettings {
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(vec!["localhost".to_owned()])
            .unwrap()
            .signed_by(&key, &ca, &ca_key)
            .unwrap();
        let cert_file = dir.join(format!("{name}.crt"));
        let key_file = dir.join(format!("{name}.key"));
        let ca_file = dir.join(format!("{name}-ca.crt"));
        std::fs::write(&cert_file, cert.pem()).unwrap();
        std::fs::write(&key_file, key.serialize_pem()).unwrap();
        std::fs::write(&ca_file, ca.pem()).unwrap();
        TlsSettings {
            cert_file,
            key_file,
            client_ca_file: Some(ca_file),
            use_identity_as_username: true,
        }
    }

    fn load_err(settings: TlsSettings) -> String {
        TlsServer::load(settings).unwrap_err().to_string()
    }

    #[test]
    fn good_files_load_with_and_without_client_certificates() {
        let dir = tempfile::tempdir().unwrap();
        let settings = write_server_files(dir.path(), "a");
        let server = TlsServer::load(settings.clone()).unwrap();
        assert!(server.use_identity_as_username());
        let plain = TlsSettings {
            client_ca_file: None,
            use_identity_as_username: false,
            ..settings
        };
        TlsServer::load(plain).unwrap();
    }

    #[test]
    fn unusable_files_are_errors_naming_key_and_file() {
        let dir = tempfile::tempdir().unwrap();
        let good = write_server_files(dir.path(), "a");
        let other = write_server_files(dir.path(), "b");
        let missing = dir.path().join("missing.pem");
        let garbage = dir.path().join("garbage.pem");
        std::fs::write(&garbage, "not a certificate\n").unwrap();

        let message = load_err(TlsSettings {
            cert_file: missing.clone(),
            ..good.clone()
        });
        assert!(
            message.starts_with(&format!(
                "cannot read tls.cert_file {}: ",
                missing.display()
            )),
            "{message}"
        );
        let message = load_err(TlsSettings {
            cert_file: garbage.clone(),
            ..good.clone()
        });
        assert_eq!(
            message,
            format!(
                "tls.cert_file {}: holds no PEM CERTIFICATE block",
                garbage.display()
            )
        );
        let message = load_err(TlsSettings {
            key_file: garbage.clone(),
            ..good.clone()
        });
        assert!(
            message.starts_with(&format!(
                "tls.key_file {}: holds no PEM private key",
                garbage.display()
            )),
            "{message}"
        );
        let message = load_err(TlsSettings {
            key_file: other.key_file.clone(),
            ..good.clone()
        });
        assert!(
            message.starts_with(&format!(
                "tls.key_file {}: does not go with tls.cert_file {}",
                other.key_file.display(),
                good.cert_file.display()
            )),
            "{message}"
        );
        let message = load_err(TlsSettings {
            client_ca_file: Some(garbage.clone()),
            ..good.clone()
        });
        assert!(
            message.starts_with(&format!("tls.client_ca_file {}: ", garbage.display())),
            "{message}"
        );
        let message = load_err(TlsSettings {
            client_ca_file: None,
            ..good
        });
        assert!(message.contains("needs tls.client_ca_file"), "{message}");
    }

    #[test]
    fn reload_swaps_the_configuration_and_a_bad_file_keeps_the_old_one() {
        let dir = tempfile::tempdir().unwrap();
        let settings = write_server_files(dir.path(), "a");
        let server = TlsServer::load(settings.clone()).unwrap();
        let first = server.config();

        // New files under the same names: a new configuration.
        let fresh = write_server_files(dir.path(), "b");
        std::fs::copy(&fresh.cert_file, &settings.cert_file).unwrap();
        std::fs::copy(&fresh.key_file, &settings.key_file).unwrap();
        server.reload().unwrap();
        let second = server.config();
        assert!(!Arc::ptr_eq(&first, &second));

        // A broken key: the reload fails and the second configuration stays.
        std::fs::write(&settings.key_file, "-----BEGIN PRIVATE KEY-----\n").unwrap();
        let error = server.reload().unwrap_err();
        assert!(error.to_string().starts_with("tls.key_file "), "{error}");
        assert!(Arc::ptr_eq(&second, &server.config()));
    }
}
