//! `chatctl`: operator commands. `migrate` applies the CQL migrations; `create-topics` creates the Kafka
//! topics through the admin API (both are safe to run again); `rebuild` replays the log into a keyspace and
//! `diff` compares two keyspaces; `token` mints a development token; `conversation` creates a conversation
//! through the chat service's gRPC API.

use std::time::Duration;

use anyhow::{Context, bail};
use chat_service::kafka_client::KafkaClient;
use clap::{Parser, Subcommand};
use lifecycle::kafka_tls::KafkaTlsArgs;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::types::RDKafkaErrorCode;

#[derive(Parser)]
#[command(name = "chatctl", version, about = "Operator commands for the chat platform")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Creates the keyspace if needed and applies the numbered CQL migrations it lacks.
    Migrate {
        #[arg(long, env = "CHAT_CASSANDRA_NODES", default_value = "127.0.0.1:19042", value_delimiter = ',')]
        cassandra_nodes: Vec<String>,
        #[arg(long, env = "CHAT_CASSANDRA_KEYSPACE", default_value = "chat")]
        keyspace: String,
        /// CQL replication map of the keyspace, used only when it is created.
        #[arg(
            long,
            env = "CHAT_CASSANDRA_REPLICATION",
            default_value = "{'class': 'SimpleStrategy', 'replication_factor': 1}"
        )]
        replication: String,
    },
    /// Creates the event topic (and its dead-letter topic) with the given partition count, if missing.
    CreateTopics {
        #[arg(long, env = "CHAT_KAFKA_BROKERS", default_value = "127.0.0.1:19092")]
        kafka_brokers: String,
        #[arg(long, env = "CHAT_EVENTS_TOPIC", default_value = "chat.events.v1")]
        topic: String,
        #[arg(long, env = "CHAT_EVENTS_PARTITIONS", default_value_t = 8)]
        partitions: i32,
        #[arg(long, env = "CHAT_EVENTS_REPLICATION", default_value_t = 1)]
        replication: i32,
        #[command(flatten)]
        kafka_tls: KafkaTlsArgs,
    },
    /// Replays the whole events topic, from its beginning, into a keyspace (migrated first; normally a new
    /// one): every projection of the log (history, idempotency records, read positions, conversations and
    /// their members) is rebuilt from the log alone.
    Rebuild {
        #[arg(long, env = "CHAT_KAFKA_BROKERS", default_value = "127.0.0.1:19092")]
        kafka_brokers: String,
        #[arg(long, env = "CHAT_EVENTS_TOPIC", default_value = "chat.events.v1")]
        topic: String,
        #[arg(long, env = "CHAT_CASSANDRA_NODES", default_value = "127.0.0.1:19042", value_delimiter = ',')]
        cassandra_nodes: Vec<String>,
        /// The keyspace to rebuild into.
        #[arg(long)]
        keyspace: String,
        #[arg(
            long,
            env = "CHAT_CASSANDRA_REPLICATION",
            default_value = "{'class': 'SimpleStrategy', 'replication_factor': 1}"
        )]
        replication: String,
        #[command(flatten)]
        kafka_tls: KafkaTlsArgs,
    },
    /// Compares what two keyspaces hold of each conversation (the projections of the log); prints every
    /// difference and exits 1 if there is one.
    Diff {
        #[arg(long, env = "CHAT_CASSANDRA_NODES", default_value = "127.0.0.1:19042", value_delimiter = ',')]
        cassandra_nodes: Vec<String>,
        #[arg(long)]
        keyspace: String,
        #[arg(long)]
        other: String,
        /// Compare only the conversations the other keyspace holds (e.g. a keyspace rebuilt from one topic,
        /// against a live keyspace that other topics also fill).
        #[arg(long)]
        only_other_conversations: bool,
    },
    /// Prints a signed HS256 token for a user (development: production tokens come from your identity provider).
    Token {
        #[arg(long)]
        user: String,
        /// The device, put in the token's `did` claim; else clients pass `device_id` in the URL.
        #[arg(long)]
        device: Option<String>,
        #[arg(long, default_value_t = 3600)]
        ttl_secs: i64,
        #[arg(long, env = "GATEWAY_JWT_SECRET", hide_env_values = true)]
        secret: String,
    },
    /// Creates a conversation and prints its id.
    Conversation {
        #[arg(long, env = "CHAT_SERVICE_URL", default_value = "http://127.0.0.1:50051")]
        url: String,
        /// The creator, a member.
        #[arg(long)]
        by: String,
        /// The other members (one for a direct conversation).
        #[arg(long = "member", required = true)]
        members: Vec<String>,
        /// A group, even with one other member.
        #[arg(long)]
        group: bool,
        #[arg(long, default_value = "")]
        title: String,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Migrate { cassandra_nodes, keyspace, replication } => {
            let session = chat_store::connect_session(&cassandra_nodes, Duration::from_secs(30))
                .await
                .context("connecting to cassandra")?;
            let applied = chat_store::migrate(&session, &keyspace, &replication).await?;
            if applied.is_empty() {
                println!("keyspace {keyspace}: up to date");
            } else {
                println!("keyspace {keyspace}: applied {}", applied.join(", "));
            }
        }
        Command::CreateTopics { kafka_brokers, topic, partitions, replication, kafka_tls } => {
            if !(1..=10_000).contains(&partitions) {
                bail!("partitions must be between 1 and 10000");
            }
            kafka_tls.validate().map_err(anyhow::Error::msg)?;
            let kafka = KafkaClient { brokers: kafka_brokers, tls: kafka_tls };
            let admin: AdminClient<DefaultClientContext> = kafka.config().create().context("kafka admin client")?;
            let dead_letter = format!("{topic}.dlq");
            // The log is the source of truth: kept forever (in production, on tiered storage), so that every
            // projection can be rebuilt from it. With three replicas or more, a write needs two of them.
            let min_insync = if replication >= 3 { "2" } else { "1" };
            let topics = [
                NewTopic::new(&topic, partitions, TopicReplication::Fixed(replication))
                    .set("retention.ms", "-1")
                    .set("min.insync.replicas", min_insync),
                NewTopic::new(&dead_letter, 1, TopicReplication::Fixed(replication))
                    .set("retention.ms", "-1")
                    .set("min.insync.replicas", min_insync),
            ];
            let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
            for result in admin.create_topics(&topics, &opts).await.context("create topics")? {
                match result {
                    Ok(name) => println!("created topic {name}"),
                    Err((name, RDKafkaErrorCode::TopicAlreadyExists)) => {
                        println!("topic {name} exists")
                    }
                    Err((name, code)) => bail!("creating topic {name}: {code}"),
                }
            }
        }
        Command::Rebuild { kafka_brokers, topic, cassandra_nodes, keyspace, replication, kafka_tls } => {
            kafka_tls.validate().map_err(anyhow::Error::msg)?;
            let kafka = KafkaClient { brokers: kafka_brokers, tls: kafka_tls };
            let session = chat_store::connect_session(&cassandra_nodes, Duration::from_secs(30))
                .await
                .context("connecting to cassandra")?;
            chat_store::migrate(&session, &keyspace, &replication).await?;
            let store = open(&cassandra_nodes, &keyspace).await?;
            let started = std::time::Instant::now();
            let r = chat_service::rebuild::rebuild(&kafka, &topic, &store).await?;
            println!(
                "rebuilt keyspace {keyspace} from {topic}: {} events from {} partitions in {:.1} s ({} undecodable)",
                r.events,
                r.partitions,
                started.elapsed().as_secs_f64(),
                r.undecodable
            );
        }
        Command::Diff { cassandra_nodes, keyspace, other, only_other_conversations } => {
            let a = open(&cassandra_nodes, &keyspace).await?;
            let b = open(&cassandra_nodes, &other).await?;
            let scope = if only_other_conversations { Some(b.conversation_ids().await?) } else { None };
            let (compared, differences) = chat_service::rebuild::diff((&keyspace, &a), (&other, &b), scope).await?;
            for d in &differences {
                println!("{d}");
            }
            println!("{compared} conversations compared, {} differences", differences.len());
            if !differences.is_empty() {
                std::process::exit(1);
            }
        }
        Command::Token { user, device, ttl_secs, secret } => {
            let exp = chat_model::now_ms() / 1000 + ttl_secs;
            let mut claims = serde_json::json!({ "sub": user, "exp": exp });
            if let Some(d) = device {
                claims["did"] = serde_json::Value::String(d);
            }
            let key = jsonwebtoken::EncodingKey::from_secret(secret.as_bytes());
            println!("{}", jsonwebtoken::encode(&jsonwebtoken::Header::default(), &claims, &key)?);
        }
        Command::Conversation { url, by, members, group, title } => {
            use proto::v1;
            let mut chat = v1::chat_service_client::ChatServiceClient::connect(url).await.context("connecting")?;
            let kind =
                if group || members.len() > 1 { v1::ConversationKind::Group } else { v1::ConversationKind::Direct };
            let r = chat
                .create_conversation(v1::CreateConversationRequest {
                    kind: kind as i32,
                    created_by: by,
                    member_ids: members,
                    title,
                })
                .await?
                .into_inner();
            println!("{}", r.conversation.map(|c| c.conversation_id).unwrap_or_default());
        }
    }
    Ok(())
}

/// A store on `keyspace` (already migrated).
async fn open(nodes: &[String], keyspace: &str) -> anyhow::Result<chat_store::CassandraStore> {
    let config = chat_store::StoreConfig {
        nodes: nodes.to_vec(),
        keyspace: keyspace.to_owned(),
        request_timeout: Duration::from_secs(10),
        message_ttl_secs: 0,
    };
    chat_store::CassandraStore::connect(&config).await.with_context(|| format!("opening keyspace {keyspace}"))
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    #[test]
    fn the_flags_and_variables_are_well_formed() {
        super::Cli::command().debug_assert();
    }
}
