//! TLS to Redis (ElastiCache with transit encryption required). A `rediss://` URL turns it on; the server's
//! certificate is checked against `REDIS_TLS_CA_FILE` (PEM) when set, otherwise against the system's roots
//! (what ElastiCache's certificates chain to). The same variable serves the gateway and the worker.

use std::path::PathBuf;

/// The settings, as the gateway's and the worker's configurations carry them (flattened into them).
#[derive(Debug, Clone, Default, PartialEq, Eq, clap::Args)]
pub struct RedisTlsArgs {
    /// PEM certificate(s) of the CA that signed the Redis server's certificate, for a `rediss://` URL.
    /// Unset: the system's roots.
    #[arg(id = "redis_tls_ca_file", long = "redis-tls-ca-file", env = "REDIS_TLS_CA_FILE")]
    pub ca_file: Option<PathBuf>,
}

impl RedisTlsArgs {
    /// The CA's PEM bytes (`None`: the system's roots). Fails, naming the variable, on a file that cannot be
    /// read or holds no certificate, and when a CA is given for a plaintext `redis://` URL (it would be
    /// ignored: most likely the URL is wrong).
    pub fn load(&self, url: &str) -> Result<Option<Vec<u8>>, String> {
        let Some(ca) = &self.ca_file else { return Ok(None) };
        if !url.starts_with("rediss://") {
            return Err("REDIS_TLS_CA_FILE is set but the Redis URL is not rediss://".into());
        }
        let pem = std::fs::read(ca).map_err(|e| format!("REDIS_TLS_CA_FILE {}: {e}", ca.display()))?;
        if !String::from_utf8_lossy(&pem).contains("-----BEGIN CERTIFICATE-----") {
            return Err(format!("REDIS_TLS_CA_FILE {}: no PEM certificate in it", ca.display()));
        }
        Ok(Some(pem))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ca_needs_a_rediss_url_and_a_certificate() -> std::io::Result<()> {
        assert_eq!(RedisTlsArgs::default().load("rediss://h:6379/"), Ok(None));
        let dir = std::env::temp_dir().join(format!("redis-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let (good, empty) = (dir.join("ca.pem"), dir.join("empty.pem"));
        std::fs::write(&good, "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n")?;
        std::fs::write(&empty, "")?;
        let load = |p: &PathBuf, url: &str| RedisTlsArgs { ca_file: Some(p.clone()) }.load(url);
        let fails_with = |r: Result<Option<Vec<u8>>, String>, needle: &str| r.is_err_and(|e| e.contains(needle));
        assert!(fails_with(load(&good, "redis://h:6379/"), "not rediss://"));
        assert!(fails_with(load(&empty, "rediss://h:6379/"), "no PEM certificate"));
        assert!(fails_with(load(&dir.join("nope"), "rediss://h:6379/"), "REDIS_TLS_CA_FILE"));
        assert!(load(&good, "rediss://h:6379/").is_ok_and(|ca| ca.is_some()));
        std::fs::remove_dir_all(dir)
    }
}
