//! TLS between the services and Kafka (Amazon MSK's client TLS listener, or any broker's SSL listener).
//! Off unless configured; when on, every Kafka client of the process (producers, consumers, the admin
//! client) connects with TLS, checks the broker's certificate against the given CA (or the system's roots)
//! and the broker's host name. The same variables serve the chat service, the delivery worker and chatctl.
//!
//! This crate does not link Kafka's client: it gives the client properties, which each service sets on
//! its `rdkafka::ClientConfig`.

use std::path::PathBuf;

/// How long a Kafka client goes without metadata from any broker before it starts again from the bootstrap
/// servers. A broker that stops answering longer than its KRaft session (frozen, or cut off from the
/// controller) is fenced and left out of the metadata; a client that hears only from it then forgets every
/// broker it knew, and librdkafka's default (5 minutes) leaves consumer groups unable to rejoin and
/// producers unable to write for that long after the broker is back (measured: `make faults`, scenario 13).
pub const REBOOTSTRAP_AFTER_MS: u64 = 5_000;

/// The settings, as every service's configuration carries them (flattened into it).
#[derive(Debug, Clone, Default, PartialEq, Eq, clap::Args)]
pub struct KafkaTlsArgs {
    /// Connect to Kafka with TLS (e.g. MSK's TLS listener, port 9094). Off: plaintext.
    #[arg(id = "kafka_tls", long = "kafka-tls", env = "KAFKA_TLS", default_value_t = false)]
    pub tls: bool,
    /// PEM certificate(s) of the CA that signed the brokers' certificates. Unset: the system's roots (what
    /// MSK's certificates chain to).
    #[arg(id = "kafka_tls_ca_file", long = "kafka-tls-ca-file", env = "KAFKA_TLS_CA_FILE")]
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

    /// Every property a Kafka client of the services starts from: the brokers, how the client finds the
    /// cluster again ([`REBOOTSTRAP_AFTER_MS`]), and TLS. The caller adds what its own client needs.
    pub fn client_properties(&self, brokers: &str) -> Vec<(&'static str, String)> {
        let mut p = vec![
            ("bootstrap.servers", brokers.to_owned()),
            ("metadata.recovery.strategy", "rebootstrap".to_owned()),
            ("metadata.recovery.rebootstrap.trigger.ms", REBOOTSTRAP_AFTER_MS.to_string()),
        ];
        p.extend(self.properties());
        p
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
    fn every_client_finds_the_cluster_again_within_seconds() {
        let p = KafkaTlsArgs::default().client_properties("b1:9092,b2:9092");
        assert!(p.contains(&("bootstrap.servers", "b1:9092,b2:9092".into())));
        assert!(p.contains(&("metadata.recovery.strategy", "rebootstrap".into())));
        assert!(p.contains(&("metadata.recovery.rebootstrap.trigger.ms", "5000".into())));
        assert!(!p.iter().any(|(k, _)| *k == "security.protocol"));
        let tls = KafkaTlsArgs { tls: true, ca_file: None }.client_properties("b1:9094");
        assert!(tls.contains(&("security.protocol", "ssl".into())));
    }

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
