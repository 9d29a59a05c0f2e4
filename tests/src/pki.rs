//! Throwaway certificate authorities for the tests: a CA, and certificates it signs for `localhost` and
//! 127.0.0.1, written as PEM files in a temporary folder that is removed on drop.

use std::path::PathBuf;

use lifecycle::grpc_tls::GrpcTlsArgs;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};

pub struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
    dir: PathBuf,
}

/// A certificate signed by a [`Ca`], as files.
pub struct Leaf {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca: PathBuf,
}

impl Ca {
    pub fn new(name: &str) -> anyhow::Result<Ca> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate()?)?;
        let dir = std::env::temp_dir().join(format!("chat-pki-{name}-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join("ca.pem"), issuer.pem())?;
        Ok(Ca { issuer, dir })
    }

    pub fn ca_file(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// A certificate for `localhost` and 127.0.0.1, good for a server and a client.
    pub fn leaf(&self, name: &str) -> anyhow::Result<Leaf> {
        let mut params = CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])?;
        params.distinguished_name.push(DnType::CommonName, name);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        let (cert_file, key_file) = (self.dir.join(format!("{name}.pem")), self.dir.join(format!("{name}.key")));
        std::fs::write(&cert_file, cert.pem())?;
        std::fs::write(&key_file, key.serialize_pem())?;
        Ok(Leaf { cert: cert_file, key: key_file, ca: self.ca_file() })
    }
}

impl Drop for Ca {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Leaf {
    /// The services' settings for mutual TLS with this certificate.
    pub fn grpc_tls(&self) -> GrpcTlsArgs {
        GrpcTlsArgs {
            cert_file: Some(self.cert.clone()),
            key_file: Some(self.key.clone()),
            ca_file: Some(self.ca.clone()),
            server_name: None,
        }
    }
}
