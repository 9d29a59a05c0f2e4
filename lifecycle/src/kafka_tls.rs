//! TLS between the services and Kafka (Amazon MSK's client TLS listener, or any broker's SSL listener).
//! Off unless configured; when on, every Kafka client of the process (producers, consumers, the admin
//! client) connects with TLS, checks the broker's certificate against the given CA (or the system's roots)
//! and the broker's host name. The same variables serve the chat service, the delivery worker and chatctl.
//!
//! This crate does not link Kafka's client: it gives the client properties, which each service sets on
//! its `rdkafka::ClientConfig`.

use std::path::PathBuf;

/// The settings, as every service's configuration carries them (flattened into it).
#[derive(Debug, Clone, Default, PartialEq, Eq, clap::Args)]
pub struct KafkaTlsArgs {
    /// Connect to Kafka with TLS (e.g. MSK's TLS listener, port 9094). Off: plaintext.
    #[arg(long = "kafka-tls", env = "KAFKA_TLS", default_value_t = false)]
    pub tls: bool,
    /// PEM certificate(s) of the CA that signed the brokers' certificates. Unset: the system's roots (what
    /// MSK's certificates chain to).
    #[arg(long = "kafka-tls-ca-file", env = "KAFKA_TLS_CA_FILE")]
    pub ca_file: Option<PathBuf>,
}

impl KafkaTlsArgs {
    /// Checks the settings: the message names the variable at fault.
    pub fn validate(&self) -> Result<(), String> {
        match (&self.ca_file, self.tls) {
            (Some(_), false) => Err("KAFKA_TLS_CA_FILE is set but KAFKA_TLS is not true".into()),
            (Some(ca), true) => {
                let pem =
                    std::fs::read_to_string(ca).map_err(|e| format!("KAFKA_TLS_CA_FILE {}: {e}", ca.display()))?;
                if !pem.contains("-----BEGIN CERTIFICATE-----") {
                    return Err(format!("KAFKA_TLS_CA_FILE {}: no PEM certificate in it", ca.display()));
                }
                Ok(())
            }
            (None, _) => Ok(()),
        }
    }

    /// The Kafka client properties these settings stand for (none when TLS is off).
    pub fn properties(&self) -> Vec<(&'static str, String)> {
        if !self.tls {
            return Vec::new();
        }
        let mut p = vec![
            ("security.protocol", "ssl".to_owned()),
            ("ssl.endpoint.identification.algorithm", "https".to_owned()),
        ];
        match &self.ca_file {
            Some(ca) => p.push(("ssl.ca.location", ca.display().to_string())),
            // librdkafka finds the system's CA bundle itself.
            None => p.push(("ssl.ca.location", "probe".to_owned())),
        }
        p
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn off_sets_nothing_and_on_checks_the_brokers_names() {
        assert!(KafkaTlsArgs::default().properties().is_empty());
        let on = KafkaTlsArgs { tls: true, ca_file: None };
        let p = on.properties();
        assert!(p.contains(&("security.protocol", "ssl".into())));
        assert!(p.contains(&("ssl.endpoint.identification.algorithm", "https".into())));
        assert!(p.contains(&("ssl.ca.location", "probe".into())));
    }

    fn fails_with(r: Result<(), String>, needle: &str) -> bool {
        r.is_err_and(|e| e.contains(needle))
    }

    #[test]
    fn a_ca_file_needs_tls_on_and_a_certificate_in_it() -> std::io::Result<()> {
        let dir = std::env::temp_dir().join(format!("kafka-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let (good, bad) = (dir.join("ca.pem"), dir.join("empty.pem"));
        std::fs::write(&good, "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n")?;
        std::fs::write(&bad, "")?;
        let off = KafkaTlsArgs { tls: false, ca_file: Some(good.clone()) };
        assert!(fails_with(off.validate(), "KAFKA_TLS is not true"));
        assert!(fails_with(KafkaTlsArgs { tls: true, ca_file: Some(bad) }.validate(), "no PEM certificate"));
        let missing = KafkaTlsArgs { tls: true, ca_file: Some(dir.join("nope.pem")) };
        assert!(fails_with(missing.validate(), "KAFKA_TLS_CA_FILE"));
        let on = KafkaTlsArgs { tls: true, ca_file: Some(good.clone()) };
        assert_eq!(on.validate(), Ok(()));
        assert!(on.properties().contains(&("ssl.ca.location", good.display().to_string())));
        std::fs::remove_dir_all(dir)
    }
}
