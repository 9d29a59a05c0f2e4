//! `harness`: a cluster of real service processes (gateways, chat service, delivery worker) for the tests of
//! clients written in other languages (`clients/js`'s `node --test`), which spawn it.
//!
//! It starts a [`Cluster`] against the servers of `infra/local/servers.sh`, prints one JSON line (the
//! gateways' URLs, the JWT secret their tokens are signed with), then answers one JSON line per command read
//! on standard input: server-side setup and checks the client protocol has no frame for (creating a
//! conversation, reading the stored history and a device's inbox through gRPC), and faults (killing,
//! stopping and starting processes). It stops the cluster gracefully at the end of its input or on SIGTERM.
//!
//! Commands (words separated by spaces):
//! - `create <creator> <member>[,<member>...]` → `{"ok":true,"conversation_id":"…"}`
//! - `history <conversation> <reader>` → `{"ok":true,"last_seq":N,"messages":[{"seq","message_id","client_msg_id","body"}]}`
//! - `inbox <user> <device>` → `{"ok":true,"entries":[{"conversation_id","seq"}]}`
//! - `kill|stop|start gateway|chat|worker <index>` → `{"ok":true}`
//! - `ping` → `{"ok":true}`

use std::time::Duration;

use anyhow::{Context, bail};
use proto::v1;
use proto::v1::chat_service_client::ChatServiceClient;
use serde_json::{Value, json};
use tests::cluster::{Cluster, ClusterOptions, Kind};
use tests::platform::JWT_SECRET;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tonic::transport::Channel;

type Chat = ChatServiceClient<Channel>;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let options =
        ClusterOptions { chat_services: 1, gateways: 2, workers: 1, partitions: 4, ..ClusterOptions::default() };
    // Watched from now: a SIGTERM while the cluster starts stops it too (dropping a cluster kills its processes).
    let shutdown = lifecycle::Shutdown::on_signal();
    let mut cluster = tokio::select! {
        started = Cluster::start(options) => started.context("starting the cluster")?,
        () = shutdown.clone().requested() => return Ok(()),
    };
    let mut chat = connect_chat(&cluster).await?;
    let ready = json!({
        "ready": true,
        "cluster": cluster.id,
        "gateways": cluster.gateway_ws.iter().map(|a| format!("ws://{a}")).collect::<Vec<_>>(),
        "jwt_secret": JWT_SECRET,
    });
    let mut out = tokio::io::stdout();
    answer(&mut out, &ready).await?;

    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    let signal = shutdown.requested();
    tokio::pin!(signal);
    loop {
        let line = tokio::select! {
            line = lines.next_line() => line?,
            () = &mut signal => None,
        };
        let Some(line) = line else { break };
        let words: Vec<&str> = line.split_whitespace().collect();
        if words.is_empty() {
            continue;
        }
        let reply = match command(&mut cluster, &mut chat, &words).await {
            Ok(mut v) => {
                v["ok"] = json!(true);
                v
            }
            Err(e) => json!({ "ok": false, "error": format!("{e:#}") }),
        };
        answer(&mut out, &reply).await?;
    }
    // Processes the commands stopped are started again first: a stopped one is not a failure here.
    for kind in [Kind::ChatService, Kind::Gateway, Kind::Worker] {
        for i in 0..cluster.count(kind) {
            if !cluster.is_running(kind, i) {
                cluster.start_proc(kind, i).await?;
            }
        }
    }
    cluster.shutdown().await
}

async fn answer(out: &mut tokio::io::Stdout, v: &Value) -> anyhow::Result<()> {
    out.write_all(format!("{v}\n").as_bytes()).await?;
    out.flush().await?;
    Ok(())
}

async fn connect_chat(cluster: &Cluster) -> anyhow::Result<Chat> {
    let channel = Channel::from_shared(format!("http://{}", cluster.chat_addrs[0]))?
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(30))
        .connect()
        .await?;
    Ok(ChatServiceClient::new(channel).max_decoding_message_size(16 << 20))
}

fn kind(word: &str) -> anyhow::Result<Kind> {
    Ok(match word {
        "gateway" => Kind::Gateway,
        "chat" => Kind::ChatService,
        "worker" => Kind::Worker,
        other => bail!("unknown process kind {other:?} (gateway, chat, worker)"),
    })
}

async fn command(cluster: &mut Cluster, chat: &mut Chat, words: &[&str]) -> anyhow::Result<Value> {
    match words {
        ["ping"] => Ok(json!({})),
        ["create", creator, members] => {
            let member_ids: Vec<String> = members.split(',').map(str::to_owned).collect();
            let kind = if member_ids.len() == 1 { v1::ConversationKind::Direct } else { v1::ConversationKind::Group };
            let request = v1::CreateConversationRequest {
                kind: kind as i32,
                created_by: (*creator).to_owned(),
                member_ids,
                title: String::new(),
            };
            // A write is refused as unavailable while its partition moves between owners (a rebalance on a
            // loaded machine): retried, as every client of the chat service does.
            let mut tries = 0;
            let r = loop {
                match chat.create_conversation(request.clone()).await {
                    Ok(r) => break r.into_inner(),
                    Err(status) if status.code() == tonic::Code::Unavailable && tries < 60 => {
                        tries += 1;
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                    Err(status) => return Err(status.into()),
                }
            };
            let id = r.conversation.context("no conversation in the answer")?.conversation_id;
            Ok(json!({ "conversation_id": id }))
        }
        ["history", conversation, reader] => {
            let mut messages = Vec::new();
            let mut last_seq = 0;
            let mut after = 0;
            loop {
                let page = chat
                    .get_history(v1::GetHistoryRequest {
                        conversation_id: (*conversation).to_owned(),
                        user_id: (*reader).to_owned(),
                        after_seq: after,
                        limit: 500,
                        before_seq: 0,
                    })
                    .await?
                    .into_inner();
                last_seq = last_seq.max(page.last_seq);
                let Some(last) = page.messages.last() else { break };
                after = last.seq;
                for m in &page.messages {
                    messages.push(json!({
                        "seq": m.seq, "message_id": m.message_id, "client_msg_id": m.client_msg_id, "body": m.body,
                    }));
                }
            }
            Ok(json!({ "last_seq": last_seq, "messages": messages }))
        }
        ["inbox", user, device] => {
            let mut entries = Vec::new();
            let mut after = (String::new(), 0);
            loop {
                let page = chat
                    .fetch_inbox(v1::FetchInboxRequest {
                        user_id: (*user).to_owned(),
                        device_id: (*device).to_owned(),
                        limit: 500,
                        after_conversation_id: after.0.clone(),
                        after_seq: after.1,
                    })
                    .await?
                    .into_inner();
                let Some(last) = page.messages.last() else { break };
                after = (last.conversation_id.clone(), last.seq);
                for m in &page.messages {
                    entries.push(json!({ "conversation_id": m.conversation_id, "seq": m.seq }));
                }
            }
            Ok(json!({ "entries": entries }))
        }
        ["kill", k, i] => {
            cluster.kill(kind(k)?, i.parse()?)?;
            Ok(json!({}))
        }
        ["stop", k, i] => {
            cluster.stop(kind(k)?, i.parse()?).await?;
            Ok(json!({}))
        }
        ["start", k, i] => {
            let (k, i) = (kind(k)?, i.parse()?);
            cluster.start_proc(k, i).await?;
            if k == Kind::ChatService {
                cluster.wait_owners_settled().await?;
            }
            Ok(json!({}))
        }
        _ => bail!("unknown command {:?}", words.join(" ")),
    }
}
