//! `chatctl`: operator commands. `migrate` applies the CQL migrations; `create-topics` creates the Kafka
//! topics through the admin API (both are safe to run again); `token` mints a development token;
//! `conversation` creates a conversation through the chat service's gRPC API.

use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
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
        Command::CreateTopics { kafka_brokers, topic, partitions, replication } => {
            if !(1..=10_000).contains(&partitions) {
                bail!("partitions must be between 1 and 10000");
            }
            let admin: AdminClient<DefaultClientContext> =
                ClientConfig::new().set("bootstrap.servers", &kafka_brokers).create().context("kafka admin client")?;
            let dead_letter = format!("{topic}.dlq");
            let topics = [
                NewTopic::new(&topic, partitions, TopicReplication::Fixed(replication)),
                NewTopic::new(&dead_letter, 1, TopicReplication::Fixed(replication)),
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
