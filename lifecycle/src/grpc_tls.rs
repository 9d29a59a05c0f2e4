//! Mutual TLS between the platform's own services: gateways, chat services and delivery workers. Off unless
//! configured; when on, every gRPC server asks its clients for a certificate signed by the internal CA, and
//! every client presents its own and checks the server's against the same CA. The same variables serve all
//! three binaries, since a deployment has one internal CA.

use std::path::{Path, PathBuf};

use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};

/// The settings, as every service's configuration carries them (flattened into it).
#[derive(Debug, Clone, Default, PartialEq, Eq, clap::Args)]
pub struct GrpcTlsArgs {
    /// PEM certificate chain this process presents to its gRPC peers, as a server and as a client. With
    /// GRPC_TLS_KEY_FILE and GRPC_TLS_CA_FILE: mutual TLS on every internal gRPC call; all unset: plaintext.
    #[arg(long = "grpc-tls-cert-file", env = "GRPC_TLS_CERT_FILE")]
    pub cert_file: Option<PathBuf>,
    /// PEM private key of that certificate.
    #[arg(long = "grpc-tls-key-file", env = "GRPC_TLS_KEY_FILE")]
    pub key_file: Option<PathBuf>,
    /// PEM certificate(s) of the internal CA: peers must present a certificate it signed.
    #[arg(long = "grpc-tls-ca-file", env = "GRPC_TLS_CA_FILE")]
    pub ca_file: Option<PathBuf>,
    /// The name clients check in a server's certificate, instead of the host they dial (useful when
    /// gateways are reached by address, e.g. one name for the whole internal mesh).
    #[arg(long = "grpc-tls-server-name", env = "GRPC_TLS_SERVER_NAME")]
    pub server_name: Option<String>,
}

/// Loaded mutual-TLS material.
#[derive(Debug, Clone)]
pub struct GrpcTls {
    identity: Identity,
    ca: Certificate,
    server_name: Option<String>,
}

impl GrpcTlsArgs {
    /// Reads and checks the files: `None` when mutual TLS is off. The message names the variable at fault.
    pub fn load(&self) -> Result<Option<GrpcTls>, String> {
        let (cert, key, ca) = match (&self.cert_file, &self.key_file, &self.ca_file) {
            (None, None, None) => {
                if self.server_name.is_some() {
                    return Err(
                        "GRPC_TLS_SERVER_NAME is set but GRPC_TLS_CERT_FILE, _KEY_FILE and _CA_FILE are not".into()
                    );
                }
                return Ok(None);
            }
            (Some(cert), Some(key), Some(ca)) => (cert, key, ca),
            _ => return Err("set all of GRPC_TLS_CERT_FILE, GRPC_TLS_KEY_FILE and GRPC_TLS_CA_FILE, or none".into()),
        };
        // One provider for the whole process, whatever else links rustls (tonic builds its configurations
        // with the default provider).
        let _ = tokio_rustls::rustls::crypto::ring::default_provider().install_default();
        let cert_pem = read_pem_certificates(cert, "GRPC_TLS_CERT_FILE")?;
        let ca_pem = read_pem_certificates(ca, "GRPC_TLS_CA_FILE")?;
        let key_pem = std::fs::read(key).map_err(|e| format!("GRPC_TLS_KEY_FILE {}: {e}", key.display()))?;
        {
            use tokio_rustls::rustls::pki_types::PrivateKeyDer;
            use tokio_rustls::rustls::pki_types::pem::PemObject;
            PrivateKeyDer::from_pem_slice(&key_pem)
                .map_err(|e| format!("GRPC_TLS_KEY_FILE {}: no private key: {e}", key.display()))?;
        }
        if let Some(name) = &self.server_name
            && tokio_rustls::rustls::pki_types::ServerName::try_from(name.as_str()).is_err()
        {
            return Err(format!("GRPC_TLS_SERVER_NAME {name:?} is not a DNS name or an IP address"));
        }
        Ok(Some(GrpcTls {
            identity: Identity::from_pem(cert_pem, key_pem),
            ca: Certificate::from_pem(ca_pem),
            server_name: self.server_name.clone(),
        }))
    }
}

/// The file's bytes, once checked to hold at least one PEM certificate.
fn read_pem_certificates(path: &Path, var: &str) -> Result<Vec<u8>, String> {
    use tokio_rustls::rustls::pki_types::CertificateDer;
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    let pem = std::fs::read(path).map_err(|e| format!("{var} {}: {e}", path.display()))?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{var} {}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{var} {}: no certificate in the file", path.display()));
    }
    Ok(pem)
}

impl GrpcTls {
    /// For a gRPC server: our certificate, and a client certificate signed by the CA required.
    pub fn server(&self) -> ServerTlsConfig {
        ServerTlsConfig::new()
            .identity(self.identity.clone())
            .client_ca_root(self.ca.clone())
            .timeout(HANDSHAKE_TIMEOUT)
    }

    /// For a gRPC client: the server checked against the CA, our certificate presented.
    pub fn client(&self) -> ClientTlsConfig {
        let config = ClientTlsConfig::new().ca_certificate(self.ca.clone()).identity(self.identity.clone());
        match &self.server_name {
            Some(name) => config.domain_name(name.clone()),
            None => config,
        }
    }
}

/// Longest a peer may take over its TLS handshake with one of our gRPC servers.
const HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// The URL scheme of internal gRPC addresses: `https` with mutual TLS, else `http`.
pub fn scheme(tls: Option<&GrpcTls>) -> &'static str {
    if tls.is_some() { "https" } else { "http" }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(cert: Option<&str>, key: Option<&str>, ca: Option<&str>) -> GrpcTlsArgs {
        GrpcTlsArgs {
            cert_file: cert.map(PathBuf::from),
            key_file: key.map(PathBuf::from),
            ca_file: ca.map(PathBuf::from),
            server_name: None,
        }
    }

    #[test]
    fn off_when_nothing_is_set() {
        assert!(matches!(args(None, None, None).load(), Ok(None)));
    }

    #[test]
    fn a_partial_setting_is_refused() {
        let e = args(Some("/c"), None, Some("/ca")).load().expect_err("partial setting accepted");
        assert!(e.contains("GRPC_TLS_KEY_FILE"), "{e}");
        let mut only_name = args(None, None, None);
        only_name.server_name = Some("chat.internal".into());
        assert!(only_name.load().is_err());
    }

    #[test]
    fn missing_or_empty_files_name_their_variable() -> Result<(), Box<dyn std::error::Error>> {
        let e = args(Some("/nonexistent/cert.pem"), Some("/k"), Some("/ca")).load().expect_err("missing file");
        assert!(e.starts_with("GRPC_TLS_CERT_FILE"), "{e}");
        let dir = std::env::temp_dir().join(format!("grpc-tls-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let empty = dir.join("empty.pem");
        std::fs::write(&empty, "not a certificate\n")?;
        let path = empty.to_str().ok_or("path")?;
        let e = args(Some(path), Some(path), Some(path)).load().expect_err("empty file");
        assert!(e.contains("no certificate"), "{e}");
        std::fs::remove_dir_all(&dir)?;
        Ok(())
    }
}
