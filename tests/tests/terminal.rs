//! The terminal client (`chat`, clients/rust) driven in tmux as a person would use it: keys sent with
//! `send-keys`, the screen read with `capture-pane`, against the real services (gateways, chat service,
//! worker, Kafka, Cassandra, Redis).

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, bail, ensure};
use proto::v1;
use tests::platform::JWT_SECRET;
use tests::{Platform, PlatformOptions, WsClient};

fn user(name: &str) -> String {
    format!("{name}-{}", &uuid::Uuid::new_v4().simple().to_string()[..8])
}

/// The `chat` binary of this workspace's debug build (`cargo build --bins`, which `make test` runs first).
fn chat_binary() -> PathBuf {
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..").join("target"));
    target.join("debug").join("chat")
}

/// One tmux session holding the client; killed when dropped.
struct Tmux(String);

impl Tmux {
    fn start(command: &[String]) -> anyhow::Result<Tmux> {
        let name = format!("chat-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
        let status = Command::new("tmux")
            .args(["new-session", "-d", "-s", &name, "-x", "120", "-y", "30"])
            .args(command)
            .status()
            .context("running tmux (make test installs it)")?;
        ensure!(status.success(), "tmux new-session failed: {status}");
        Ok(Tmux(name))
    }

    fn keys(&self, keys: &[&str]) -> anyhow::Result<()> {
        let status = Command::new("tmux").args(["send-keys", "-t", &self.0]).args(keys).status()?;
        ensure!(status.success(), "tmux send-keys failed: {status}");
        Ok(())
    }

    fn screen(&self) -> anyhow::Result<String> {
        let out = Command::new("tmux").args(["capture-pane", "-p", "-t", &self.0]).output()?;
        ensure!(out.status.success(), "tmux capture-pane failed: {}", String::from_utf8_lossy(&out.stderr));
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Waits until the screen shows `text` (20 s at most); answers the screen.
    async fn shows(&self, text: &str) -> anyhow::Result<String> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let screen = self.screen()?;
            if screen.contains(text) {
                return Ok(screen);
            }
            if tokio::time::Instant::now() > deadline {
                bail!("the terminal never showed {text:?}; it shows:\n{screen}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn alive(&self) -> bool {
        Command::new("tmux").args(["has-session", "-t", &self.0]).status().is_ok_and(|s| s.success())
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux").args(["kill-session", "-t", &self.0]).status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_terminal_client_chats_through_a_gateway_in_tmux() -> anyhow::Result<()> {
    let p = Platform::start(PlatformOptions::default()).await?;
    let (alice, bob) = (user("alice"), user("bob"));
    let mut chat = p.chat_client().await?;
    let conv = chat
        .create_conversation(v1::CreateConversationRequest {
            kind: v1::ConversationKind::Direct as i32,
            created_by: alice.clone(),
            member_ids: vec![bob.clone()],
            title: String::new(),
        })
        .await?
        .into_inner()
        .conversation
        .context("no conversation")?
        .conversation_id;
    let mut b = WsClient::connect(p.gateways[1].ws_addr, &bob, "phone").await?;
    b.sync().await?;

    // Alice in the terminal, on gateway 0 (gateway 1 next if it goes away).
    let command = vec![
        chat_binary().display().to_string(),
        "--gateway".into(),
        p.gateways[0].ws_addr.to_string(),
        "--gateway".into(),
        p.gateways[1].ws_addr.to_string(),
        "--token".into(),
        tests::token(&alice, JWT_SECRET),
        "--device".into(),
        "terminal".into(),
        "--conversation".into(),
        conv.clone(),
    ];
    let term = Tmux::start(&command)?;
    term.shows(" live ").await?;
    term.shows(&format!("{alice} on terminal")).await?;

    // Bob writes: the terminal shows it with its number and sender.
    b.send_message(&conv, "from-bob", "hello from bob").await?;
    term.shows(&format!("1 {bob}: hello from bob")).await?;

    // Alice types and presses Enter: bob gets it, the terminal shows it at number 2.
    term.keys(&["-l", "hi bob, from the terminal"])?;
    term.shows("hi bob, from the terminal").await?;
    term.keys(&["Enter"])?;
    // Receipts of alice's device (delivered up to 1) may come first.
    let got = loop {
        let f = b.recv().await?;
        if f["type"] == "message" {
            break f;
        }
    };
    ensure!(got["body"] == "hi bob, from the terminal" && got["sender_id"] == alice.as_str(), "bob got {got}");
    ensure!(got["seq"] == 2, "bob got {got}");
    let screen = term.shows(&format!("2 {alice}: hi bob, from the terminal")).await?;
    ensure!(!screen.contains("(sending)"), "the send stayed pending:\n{screen}");
    ensure!(screen.matches("hello from bob").count() == 1, "a message shown twice:\n{screen}");
    println!("[terminal] the screen after the exchange:\n{screen}");

    // Esc quits and gives the terminal back.
    term.keys(&["Escape"])?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while term.alive() {
        ensure!(tokio::time::Instant::now() < deadline, "the client did not quit on Esc");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    b.close().await?;
    p.stop().await
}
