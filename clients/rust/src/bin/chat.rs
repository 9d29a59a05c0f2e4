//! `chat`: a terminal chat client on the client crate's [`Device`], which follows the protocol's client rules
//! (reconnect across gateways, resume by cursor, order, no duplicate, retried sends).
//!
//! ```sh
//! chat --gateway 127.0.0.1:8080 --gateway 127.0.0.1:8081 --token "$ALICE" --conversation "$CONV"
//! ```
//!
//! Keys: type and Enter to send; Tab to go to the next conversation; Esc or Ctrl-C to quit.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use chat_client::device::{Device, Report, TokenSource};
use clap::Parser;
use ratatui::crossterm::event::{self, Event, KeyCode, KeyEventKind, KeyModifiers};
use ratatui::layout::{Constraint, Layout};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Paragraph};
use tokio::sync::mpsc;

#[derive(Debug, Parser)]
#[command(name = "chat", about = "A terminal chat client")]
struct Args {
    /// Gateway addresses (host:port of their WebSocket listener), tried in turn.
    #[arg(long = "gateway", required = true)]
    gateways: Vec<SocketAddr>,
    /// The user's token (a JWT; `chatctl token --user alice` makes one locally).
    #[arg(long, env = "CHAT_TOKEN", hide_env_values = true)]
    token: String,
    /// This device's id.
    #[arg(long, default_value = "terminal")]
    device: String,
    /// Conversations to follow from their first message (more are followed as their messages arrive).
    #[arg(long = "conversation")]
    conversations: Vec<String>,
}

/// The user id a token names (`sub`), read without checking it: the gateway checks it.
fn subject(token: &str) -> anyhow::Result<String> {
    let payload = token.split('.').nth(1).context("the token is not a JWT")?;
    let json = base64url(payload).context("the token's payload is not base64url")?;
    let claims: serde_json::Value = serde_json::from_slice(&json).context("the token's payload is not JSON")?;
    claims["sub"].as_str().map(str::to_owned).context("the token has no sub")
}

fn base64url(s: &str) -> Option<Vec<u8>> {
    let value = |c: u8| match c {
        b'A'..=b'Z' => Some(c - b'A'),
        b'a'..=b'z' => Some(c - b'a' + 26),
        b'0'..=b'9' => Some(c - b'0' + 52),
        b'-' => Some(62),
        b'_' => Some(63),
        _ => None,
    };
    let (mut out, mut acc, mut bits) = (Vec::new(), 0u32, 0);
    for c in s.trim_end_matches('=').bytes() {
        acc = (acc << 6) | u32::from(value(c)?);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    Some(out)
}

/// What the screen shows besides the device's report.
struct Screen {
    user: String,
    device: String,
    /// The conversation shown, by index in [`conversations`].
    open: usize,
    input: String,
    /// Sends not answered yet (client id, conversation, body), and the last send that failed.
    pending: Vec<(String, String, String)>,
    failed: Option<String>,
}

/// The conversations to offer: those given, then those that messages arrived in.
fn conversations(given: &[String], report: &Report) -> Vec<String> {
    let mut out: Vec<String> = given.to_vec();
    let seen: BTreeSet<&String> = report.shown.keys().collect();
    out.extend(seen.into_iter().filter(|c| !given.contains(c)).cloned());
    out
}

fn connection_state(report: &Report) -> (&'static str, Color) {
    match report.sessions.last() {
        Some(s) if s.ended.is_none() && s.synced.is_some() => ("live", Color::Green),
        Some(s) if s.ended.is_none() => ("syncing", Color::Yellow),
        _ => ("connecting", Color::Red),
    }
}

fn draw(frame: &mut ratatui::Frame, screen: &Screen, report: &Report, convs: &[String]) {
    let [top, body, bottom] =
        Layout::vertical([Constraint::Length(1), Constraint::Min(1), Constraint::Length(3)]).areas(frame.area());
    let (state, color) = connection_state(report);
    let open = convs.get(screen.open);
    let status = Line::from(vec![
        Span::styled(format!(" {state} "), Style::default().fg(Color::Black).bg(color)),
        Span::raw(format!(" {} on {} ", screen.user, screen.device)),
        Span::styled(
            match open {
                Some(c) => format!("· conversation {} ({}/{}) ", short(c), screen.open + 1, convs.len()),
                None => "· no conversation yet ".into(),
            },
            Style::default().add_modifier(Modifier::BOLD),
        ),
        Span::styled("· Enter send · Tab next · Esc quit", Style::default().fg(Color::DarkGray)),
    ]);
    frame.render_widget(Paragraph::new(status), top);

    let mut lines: Vec<Line> = Vec::new();
    if let Some(conv) = open {
        let arrived = report.arrivals.get(conv);
        for (seq, _) in report.shown.get(conv).into_iter().flatten() {
            let a = arrived.and_then(|a| a.get(seq));
            let sender = a.and_then(|a| a.sender.clone()).unwrap_or_else(|| "?".into());
            let text = a.and_then(|a| a.body.clone()).unwrap_or_default();
            let style = if sender == screen.user { Style::default().fg(Color::Cyan) } else { Style::default() };
            lines.push(Line::from(vec![
                Span::styled(format!("{seq:>5} "), Style::default().fg(Color::DarkGray)),
                Span::styled(format!("{sender}: "), style.add_modifier(Modifier::BOLD)),
                Span::styled(text, style),
            ]));
        }
        for (_, c, text) in &screen.pending {
            if c == conv {
                lines.push(Line::styled(
                    format!("  ... {}: {text} (sending)", screen.user),
                    Style::default().fg(Color::DarkGray),
                ));
            }
        }
    }
    if let Some(e) = &screen.failed {
        lines.push(Line::styled(format!("not sent: {e}"), Style::default().fg(Color::Red)));
    }
    // The newest at the bottom: skip what does not fit above.
    let room = usize::from(body.height.saturating_sub(2));
    let skip = lines.len().saturating_sub(room);
    let messages =
        Paragraph::new(lines.into_iter().skip(skip).collect::<Vec<_>>()).block(Block::bordered().title(" messages "));
    frame.render_widget(messages, body);
    let input = Paragraph::new(screen.input.as_str()).block(Block::bordered().title(" write "));
    frame.render_widget(input, bottom);
}

fn short(id: &str) -> &str {
    id.get(id.len().saturating_sub(8)..).unwrap_or(id)
}

/// What a key asks for.
enum Action {
    None,
    Send,
    Quit,
}

fn on_key(screen: &mut Screen, code: KeyCode, modifiers: KeyModifiers, conversations: usize) -> Action {
    match code {
        KeyCode::Esc => Action::Quit,
        KeyCode::Char('c') if modifiers.contains(KeyModifiers::CONTROL) => Action::Quit,
        KeyCode::Enter => Action::Send,
        KeyCode::Tab if conversations > 0 => {
            screen.open = (screen.open + 1) % conversations;
            Action::None
        }
        KeyCode::Backspace => {
            screen.input.pop();
            Action::None
        }
        KeyCode::Char(c) => {
            screen.input.push(c);
            Action::None
        }
        _ => Action::None,
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let user = subject(&args.token)?;
    let token = args.token.clone();
    let source: TokenSource = Arc::new(move || token.clone());
    let device = Arc::new(Device::spawn(&user, &args.device, source, args.gateways.clone(), 0, &args.conversations));
    let mut screen =
        Screen { user, device: args.device.clone(), open: 0, input: String::new(), pending: Vec::new(), failed: None };
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<(String, Result<(), String>)>();
    let mut terminal = ratatui::init();
    let outcome = loop {
        while let Ok((id, result)) = done_rx.try_recv() {
            screen.pending.retain(|(p, _, _)| *p != id);
            screen.failed = result.err();
        }
        let report = device.report();
        let convs = conversations(&args.conversations, &report);
        if let Err(e) = terminal.draw(|f| draw(f, &screen, &report, &convs)) {
            break Err(e.into());
        }
        let key = tokio::task::block_in_place(|| -> std::io::Result<Option<event::KeyEvent>> {
            if event::poll(Duration::from_millis(100))?
                && let Event::Key(k) = event::read()?
                && k.kind == KeyEventKind::Press
            {
                return Ok(Some(k));
            }
            Ok(None)
        });
        let key = match key {
            Ok(Some(k)) => k,
            Ok(None) => continue,
            Err(e) => break Err(e.into()),
        };
        match on_key(&mut screen, key.code, key.modifiers, convs.len()) {
            Action::Quit => break Ok(()),
            Action::None => {}
            Action::Send => {
                let Some(conv) = convs.get(screen.open).cloned() else { continue };
                let body = std::mem::take(&mut screen.input);
                if body.trim().is_empty() {
                    continue;
                }
                // Time-ordered (v7): an id past every earlier one of the user's is known new without a read.
                let id = uuid::Uuid::now_v7().to_string();
                screen.pending.push((id.clone(), conv.clone(), body.clone()));
                let (device, done) = (device.clone(), done_tx.clone());
                tokio::spawn(async move {
                    let result = device.send(&conv, &id, &body).await.map(|_| ()).map_err(|e| format!("{e:#}"));
                    let _ = done.send((id, result));
                });
            }
        }
    };
    ratatui::restore();
    outcome
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_names_its_user() {
        // {"alg":"HS256"}.{"sub":"alice","exp":1}.signature
        let token = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhbGljZSIsImV4cCI6MX0.c2ln";
        assert_eq!(subject(token).ok().as_deref(), Some("alice"));
        assert!(subject("not-a-token").is_err());
        assert!(subject("a.!!!.c").is_err());
    }

    #[test]
    fn keys_edit_send_switch_and_quit() {
        let mut s = Screen {
            user: "a".into(),
            device: "d".into(),
            open: 0,
            input: String::new(),
            pending: vec![],
            failed: None,
        };
        for c in "hi".chars() {
            on_key(&mut s, KeyCode::Char(c), KeyModifiers::NONE, 2);
        }
        on_key(&mut s, KeyCode::Char('x'), KeyModifiers::NONE, 2);
        on_key(&mut s, KeyCode::Backspace, KeyModifiers::NONE, 2);
        assert_eq!(s.input, "hi");
        assert!(matches!(on_key(&mut s, KeyCode::Enter, KeyModifiers::NONE, 2), Action::Send));
        on_key(&mut s, KeyCode::Tab, KeyModifiers::NONE, 2);
        on_key(&mut s, KeyCode::Tab, KeyModifiers::NONE, 2);
        assert_eq!(s.open, 0);
        assert!(matches!(on_key(&mut s, KeyCode::Char('c'), KeyModifiers::CONTROL, 2), Action::Quit));
        assert!(matches!(on_key(&mut s, KeyCode::Esc, KeyModifiers::NONE, 2), Action::Quit));
    }
}
