// The web chat: one page on the TypeScript SDK (clients/js), served by the gateway at /app/. The SDK follows
// the protocol's client rules (resume, order, duplicates, retries); this file only draws what it reports.

import { ChatClient } from "/app/sdk/index.js";

const $ = (id) => document.getElementById(id);
const HISTORY_PAGE = 50;
const TYPING_EVERY_MS = 3_000;

/** The token and device: from the sign-in link's fragment (never sent to a server), else from this tab. */
function credentials() {
  const params = new URLSearchParams(location.hash.slice(1));
  if (params.has("token")) {
    sessionStorage.setItem("chat.token", params.get("token"));
    sessionStorage.setItem("chat.device", params.get("device") || "web");
    // The token leaves the address bar (and the history) at once.
    history.replaceState(null, "", location.pathname);
  }
  const token = sessionStorage.getItem("chat.token");
  return token ? { token, device: sessionStorage.getItem("chat.device") || "web" } : null;
}

/** The user id a token names (`sub`), read without checking it: the gateway checks it. */
function subjectOf(token) {
  try {
    const part = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    return JSON.parse(atob(part)).sub;
  } catch {
    return null;
  }
}

function signIn() {
  $("signin").hidden = false;
  $("signin").addEventListener("submit", (e) => {
    e.preventDefault();
    sessionStorage.setItem("chat.token", $("signin-token").value.trim());
    sessionStorage.setItem("chat.device", $("signin-device").value.trim());
    location.reload();
  });
}

class ChatPage {
  constructor({ token, device }) {
    this.me = subjectOf(token);
    this.device = device;
    this.client = new ChatClient({
      urls: [`${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/v1/ws`],
      deviceId: device,
      token: () => sessionStorage.getItem("chat.token") || token,
    });
    /** @type {Map<string, object>} conversation id → its summary in the list */
    this.list = new Map();
    this.nextPageToken = undefined;
    /** @type {Map<string, Map<number, object>>} conversation id → seq → message, for loaded conversations */
    this.messages = new Map();
    /** conversation id → the lowest number loaded (older pages load below it) */
    this.oldest = new Map();
    /** conversation id → user → highest number delivered to / read by that user (others only) */
    this.delivered = new Map();
    this.read = new Map();
    /** sends not answered yet: client id → { conversationId, body, failed } */
    this.pending = new Map();
    this.open = null;
    this.lastTypingSent = 0;
    this.typers = new Map();
    this.listRefresh = null;
  }

  start() {
    $("me").textContent = `${this.me ?? "?"} on ${this.device}`;
    $("chat").hidden = false;
    this.client.on("state", (s) => this.onState(s));
    this.client.on("message", (m) => this.onMessage(m));
    this.client.on("receipt", (r) => this.onReceipt(r));
    this.client.on("typing", (t) => this.onTyping(t));
    this.client.on("error", (e) => console.warn("chat:", e));
    $("composer").addEventListener("submit", (e) => {
      e.preventDefault();
      this.send();
    });
    $("body").addEventListener("input", () => this.typing());
    $("more-conversations").addEventListener("click", () => this.loadConversations(true));
    $("messages").addEventListener("scroll", () => {
      if ($("messages").scrollTop === 0) this.loadOlder();
    });
    document.addEventListener("visibilitychange", () => this.markRead());
    this.client.connect().catch((e) => console.warn("chat: connect", e));
  }

  onState(s) {
    const el = $("state");
    el.dataset.state = s.state;
    el.textContent = s.state === "waiting" ? `reconnecting in ${Math.ceil((s.delayMs ?? 0) / 1000)} s` : s.state;
    if (s.state === "live") this.loadConversations(false);
  }

  async loadConversations(more) {
    const page = await this.client.conversations(more ? { pageToken: this.nextPageToken } : { limit: 20 });
    if (!more) this.list.clear();
    for (const c of page.conversations) this.list.set(c.conversationId, c);
    this.nextPageToken = page.nextPageToken;
    $("more-conversations").hidden = page.nextPageToken === undefined;
    this.drawList();
  }

  /** The list again, a moment after a change (a burst of messages asks once). */
  refreshList() {
    clearTimeout(this.listRefresh);
    this.listRefresh = setTimeout(() => this.loadConversations(false).catch(() => {}), 300);
  }

  titleOf(c) {
    if (c.title) return c.title;
    const others = c.memberIds.filter((u) => u !== this.me);
    return others.length > 0 ? others.join(", ") : "(just you)";
  }

  drawList() {
    const ul = $("conversations");
    ul.replaceChildren();
    for (const c of this.list.values()) {
      const li = document.createElement("li");
      li.dataset.conversation = c.conversationId;
      li.setAttribute("aria-current", String(c.conversationId === this.open));
      const name = document.createElement("span");
      name.textContent = this.titleOf(c);
      li.append(name);
      const unread = c.conversationId === this.open ? 0 : c.unread;
      if (unread > 0) {
        const badge = document.createElement("span");
        badge.className = "unread";
        badge.textContent = String(unread);
        li.append(badge);
      }
      li.addEventListener("click", () => this.openConversation(c.conversationId));
      ul.append(li);
    }
  }

  async openConversation(id) {
    this.open = id;
    $("empty").hidden = true;
    $("open").hidden = false;
    const c = this.list.get(id);
    $("title").textContent = c ? this.titleOf(c) : id;
    this.drawList();
    if (!this.messages.has(id)) {
      this.messages.set(id, new Map());
      const info = await this.client.conversation(id);
      const read = new Map();
      for (const p of info.readPositions) if (p.userId !== this.me) read.set(p.userId, p.readSeq);
      this.read.set(id, read);
      // The newest page first; older pages load on scrolling up.
      const page = await this.client.history(id, { beforeSeq: Number.MAX_SAFE_INTEGER, limit: HISTORY_PAGE });
      for (const m of page.messages) this.messages.get(id).set(m.seq, m);
      this.oldest.set(id, page.messages.length > 0 ? page.messages[0].seq : page.lastSeq + 1);
      // Followed from what is shown: what comes after arrives as `message` events, in order.
      this.client.follow(id, page.lastSeq);
    }
    this.drawMessages(true);
    this.markRead();
  }

  async loadOlder() {
    const id = this.open;
    const below = this.oldest.get(id);
    if (!id || !below || below <= 1) return;
    const list = $("messages");
    const height = list.scrollHeight;
    const page = await this.client.history(id, { beforeSeq: below, limit: HISTORY_PAGE });
    for (const m of page.messages) this.messages.get(id).set(m.seq, m);
    this.oldest.set(id, page.messages.length > 0 ? page.messages[0].seq : 1);
    this.drawMessages(false);
    list.scrollTop = list.scrollHeight - height;
  }

  onMessage(m) {
    const loaded = this.messages.get(m.conversationId);
    if (loaded) loaded.set(m.seq, m);
    if (m.conversationId === this.open) {
      this.drawMessages(true);
      this.markRead();
    }
    this.refreshList();
  }

  onReceipt(r) {
    if (r.userId === this.me) return;
    const table = r.kind === "read" ? this.read : this.delivered;
    if (!table.has(r.conversationId)) table.set(r.conversationId, new Map());
    const by = table.get(r.conversationId);
    by.set(r.userId, Math.max(by.get(r.userId) ?? 0, r.upToSeq));
    if (r.conversationId === this.open) this.drawMessages(false);
  }

  onTyping(t) {
    if (t.userId === this.me) return;
    const key = `${t.conversationId} ${t.userId}`;
    if (t.typing) this.typers.set(key, t);
    else this.typers.delete(key);
    const names = [...this.typers.values()].filter((x) => x.conversationId === this.open).map((x) => x.userId);
    $("typing").textContent = names.length === 0 ? "" : `${names.join(", ")} ${names.length === 1 ? "is" : "are"} typing…`;
  }

  /** Ticks of one of my messages: ✓ sent, ✓✓ delivered to another member, ✓✓ (blue) read by one. */
  ticks(conversationId, seq) {
    const highest = (table) => Math.max(0, ...(table.get(conversationId)?.values() ?? []));
    if (highest(this.read) >= seq) return ["✓✓", "read"];
    if (highest(this.delivered) >= seq) return ["✓✓", "delivered"];
    return ["✓", "sent"];
  }

  drawMessages(toBottom) {
    const id = this.open;
    const list = $("messages");
    list.replaceChildren();
    const shown = [...(this.messages.get(id)?.values() ?? [])].sort((a, b) => a.seq - b.seq);
    for (const m of shown) {
      const li = document.createElement("li");
      li.dataset.seq = String(m.seq);
      const mine = m.senderId === this.me;
      li.className = mine ? "mine" : "theirs";
      if (!mine) {
        const from = document.createElement("span");
        from.className = "from";
        from.textContent = m.senderId;
        li.append(from);
      }
      const body = document.createElement("span");
      body.className = "body";
      body.textContent = m.body;
      li.append(body);
      if (mine) {
        const [text, kind] = this.ticks(id, m.seq);
        const t = document.createElement("span");
        t.className = `ticks ${kind}`;
        t.dataset.status = kind;
        t.textContent = text;
        li.append(t);
      }
      list.append(li);
    }
    for (const [sendId, p] of this.pending) {
      if (p.conversationId !== id) continue;
      const li = document.createElement("li");
      li.className = `mine ${p.failed ? "failed" : "pending"}`;
      li.dataset.send = sendId;
      const body = document.createElement("span");
      body.className = "body";
      body.textContent = p.body;
      const t = document.createElement("span");
      t.className = "ticks";
      t.dataset.status = p.failed ? "failed" : "pending";
      t.textContent = p.failed ? `not sent: ${p.failed}` : "sending…";
      li.append(body, t);
      list.append(li);
    }
    if (toBottom) list.scrollTop = list.scrollHeight;
  }

  markRead() {
    const id = this.open;
    if (!id || document.visibilityState !== "visible") return;
    const seqs = [...(this.messages.get(id)?.keys() ?? [])];
    if (seqs.length > 0) this.client.read(id, Math.max(...seqs));
  }

  send() {
    const id = this.open;
    const input = $("body");
    const body = input.value;
    if (!id || body.trim() === "") return;
    input.value = "";
    const sendId = crypto.randomUUID();
    this.pending.set(sendId, { conversationId: id, body, failed: null });
    this.client.typing(id, false);
    this.lastTypingSent = 0;
    this.drawMessages(true);
    this.client
      .send(id, body, { id: sendId })
      .then((sent) => {
        this.pending.delete(sendId);
        const loaded = this.messages.get(sent.conversationId);
        if (loaded && !loaded.has(sent.seq)) {
          loaded.set(sent.seq, { conversationId: id, seq: sent.seq, messageId: sent.messageId, senderId: this.me, body, sentAtMs: sent.sentAtMs });
        }
        if (id === this.open) this.drawMessages(true);
        this.refreshList();
      })
      .catch((e) => {
        this.pending.get(sendId).failed = e.code ?? String(e);
        if (id === this.open) this.drawMessages(false);
      });
  }

  typing() {
    const now = Date.now();
    if (!this.open || now - this.lastTypingSent < TYPING_EVERY_MS) return;
    this.lastTypingSent = now;
    this.client.typing(this.open, true);
  }
}

const who = credentials();
if (who) {
  const page = new ChatPage(who);
  window.chat = page;
  page.start();
} else {
  signIn();
}
