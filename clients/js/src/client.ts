// `ChatClient`: one device's connection to the platform, following every client rule of docs/protocol.md so
// that the app does not have to: reconnect across gateways with backoff, resume each conversation by cursor,
// deduplicate, hold and fill gaps, acknowledge, retry sends with the same id, renew the token.

import { backoffDelay, type BackoffPolicy } from "./backoff.js";
import { Emitter } from "./emitter.js";
import { ChatError } from "./errors.js";
import {
  CloseCode,
  ID_PATTERN,
  MAX_BODY_BYTES,
  MAX_HISTORY_LIMIT,
  parseServerFrame,
  rateLimitWaitMs,
  type ClientFrame,
  type ConversationFrame,
  type ConversationsFrame,
  type ErrorFrame,
  type HistoryFrame,
  type SentFrame,
  type ServerFrame,
  type WireMessage,
} from "./protocol.js";
import { Sequence } from "./sequence.js";
import { tokenExpiryMs } from "./token.js";
import type {
  ChatMessage,
  ClientEvents,
  ClientOptions,
  ConnectionState,
  ConversationInfo,
  ConversationListPage,
  HistoryPage,
  Sent,
  StateChange,
  Via,
  WebSocketConstructor,
  WebSocketLike,
} from "./types.js";

/** Counters of what the client did, for tests and diagnostics. */
export interface ClientStats {
  /** Connections that were upgraded (got `welcome`). */
  sessions: number;
  /** Messages shown to the app (`message` events). */
  shown: number;
  /** Arrivals dropped because their number was shown or held already. */
  duplicatesDropped: number;
  /** Arrivals per channel, duplicates included. */
  arrivals: Record<Via, number>;
  /** Sends put on the wire again (after a reconnect, `unavailable`, `rate_limited` or a timeout). */
  resends: number;
  /** `delivered` frames written. */
  acksSent: number;
  /** History requests the client made on its own (resume and gap filling). */
  historyRequests: number;
  /** Close codes of the connections that ended, in order. */
  closeCodes: number[];
}

interface Outgoing {
  id: string;
  conversationId: string;
  body: string;
  promise: Promise<Sent>;
  resolve: (s: Sent) => void;
  reject: (e: Error) => void;
  /** When it was last written on the current connection; `null`: not on this connection yet. */
  sentAt: number | null;
  /** Not to be written before this time (after `unavailable` or `rate_limited`). */
  notBefore: number;
  attempts: number;
}

interface AppRequest {
  frame: ClientFrame & { id: string };
  resolve: (f: ServerFrame) => void;
  reject: (e: Error) => void;
  /** The connection it was written on; `null`: to be written. */
  sentOn: number | null;
  notBefore: number;
  retries: number;
  timer: ReturnType<typeof setTimeout>;
}

interface Connection {
  ws: WebSocketLike;
  url: string;
  serial: number;
  opened: boolean;
  welcomed: boolean;
  live: boolean;
  /** Closed by the client itself to reconnect at once (`reconnect()`, token renewal): no backoff. */
  planned: boolean;
  lastReceived: number;
  lastPing: number;
  tick: ReturnType<typeof setInterval> | null;
  timers: ReturnType<typeof setTimeout>[];
}

interface SessionEnd {
  code: number;
  reason: string;
  opened: boolean;
  live: boolean;
  planned: boolean;
}

const TICK_MS = 100;
const CONNECT_TIMEOUT_MS = 10_000;
/** A protocol `ping` after this long without a frame (browsers cannot see the gateway's WebSocket pings). */
const PING_AFTER_MS = 20_000;
/** A connection silent this long (pings unanswered) is given up. */
const DEAD_AFTER_MS = 45_000;

export class ChatClient extends Emitter<ClientEvents> {
  private readonly urls: string[];
  private readonly deviceId: string;
  private readonly tokenProvider: () => Promise<string> | string;
  private readonly WS: WebSocketConstructor;
  private readonly backoff: BackoffPolicy;
  private readonly rateLimitedBackoffMs: number;
  private readonly gapGraceMs: number;
  private readonly ackDelayMs: number;
  private readonly sendTimeoutMs: number;
  private readonly maxPendingSends: number;
  private readonly requestTimeoutMs: number;
  private readonly refreshBeforeExpiryMs: number;
  private readonly resumePageSize: number;
  private readonly typingTimeoutMs: number;
  private readonly hooks: ClientOptions["transportHooks"];

  private readonly convs = new Map<string, Sequence>();
  private readonly outbox = new Map<string, Outgoing>();
  private readonly requests = new Map<string, AppRequest>();
  /** The client's own history requests (resume, gap filling), by request id. */
  private readonly internal = new Map<string, { conversationId: string; resume: boolean }>();
  /** Read positions not written yet (offline), per conversation. */
  private readonly reads = new Map<string, number>();
  private readonly typingTimers = new Map<string, ReturnType<typeof setTimeout>>();
  private readonly liveWaiters: { resolve: () => void; reject: (e: Error) => void }[] = [];

  private conn: Connection | null = null;
  private running = false;
  private stateNow: ConnectionState = "idle";
  private nextUrl = 0;
  private serial = 0;
  private requestSerial = 0;
  private sendSerial = 0;
  private token: string | null = null;
  private tokenExp: number | null = null;
  private tokenObtainedAt = 0;
  private failedOpens = 0;
  private ackTimer: ReturnType<typeof setTimeout> | null = null;
  private wake: (() => void) | null = null;
  private user: string | null = null;

  readonly stats: ClientStats = {
    sessions: 0,
    shown: 0,
    duplicatesDropped: 0,
    arrivals: { pushed: 0, inbox: 0, history: 0, own: 0 },
    resends: 0,
    acksSent: 0,
    historyRequests: 0,
    closeCodes: [],
  };

  constructor(options: ClientOptions) {
    super();
    if (!options.urls || options.urls.length === 0) throw new ChatError("invalid_option", "urls is empty");
    if (!ID_PATTERN.test(options.deviceId)) {
      throw new ChatError("invalid_option", "deviceId must be 1 to 64 bytes of [A-Za-z0-9._:@-]");
    }
    const WS = options.WebSocket ?? (globalThis as { WebSocket?: WebSocketConstructor }).WebSocket;
    if (!WS) {
      throw new ChatError("no_websocket", "no global WebSocket: pass one (in Node 20, the ws package's) as options.WebSocket");
    }
    this.WS = WS;
    this.urls = [...options.urls];
    this.deviceId = options.deviceId;
    this.tokenProvider = options.token;
    this.backoff = {
      initialMs: options.backoff?.initialMs ?? 250,
      maxMs: options.backoff?.maxMs ?? 30_000,
      factor: options.backoff?.factor ?? 2,
    };
    this.rateLimitedBackoffMs = options.rateLimitedBackoffMs ?? 5_000;
    this.gapGraceMs = options.gapGraceMs ?? 500;
    this.ackDelayMs = options.ackDelayMs ?? 250;
    this.sendTimeoutMs = options.sendTimeoutMs ?? 10_000;
    this.maxPendingSends = options.maxPendingSends ?? 1_000;
    this.requestTimeoutMs = options.requestTimeoutMs ?? 30_000;
    this.refreshBeforeExpiryMs = options.refreshBeforeExpiryMs ?? 30_000;
    this.resumePageSize = Math.min(MAX_HISTORY_LIMIT, Math.max(1, options.resumePageSize ?? 200));
    this.typingTimeoutMs = options.typingTimeoutMs ?? 6_000;
    this.hooks = options.transportHooks;
    for (const [conversationId, last] of Object.entries(options.conversations ?? {})) {
      this.convs.set(conversationId, new Sequence(last));
    }
  }

  /** The connection's state now. */
  get state(): ConnectionState {
    return this.stateNow;
  }

  /** The user id the gateway read from the token (after the first `welcome`). */
  get userId(): string | null {
    return this.user;
  }

  /**
   * Starts connecting (and reconnecting, until `close()`); resolves when the connection is `live` (its inbox
   * sent). Rejects if the client is closed or replaced first.
   */
  connect(): Promise<void> {
    if (this.stateNow === "closed") return Promise.reject(new ChatError("closed", "the client was closed"));
    const live = new Promise<void>((resolve, reject) => {
      if (this.conn?.live) resolve();
      else this.liveWaiters.push({ resolve, reject });
    });
    if (!this.running) {
      this.running = true;
      void this.run();
    }
    return live;
  }

  /**
   * Drops the connection and connects again at once, to the next gateway (as after a network change). The
   * client resumes every conversation and sends again what is unanswered.
   */
  reconnect(): void {
    if (this.conn) {
      this.conn.planned = true;
      this.closeSocket(this.conn, CloseCode.NORMAL, "reconnect");
    } else {
      this.wake?.();
    }
  }

  /** Stops for good: closes the connection, fails pending sends and requests with `closed`. */
  close(): void {
    if (this.stateNow === "closed") return;
    this.running = false;
    const conn = this.conn;
    this.conn = null;
    if (conn) {
      this.endConnection(conn);
      this.closeSocket(conn, CloseCode.NORMAL, "client closed");
    }
    this.wake?.();
    const closed = () => new ChatError("closed", "the client was closed");
    for (const o of this.outbox.values()) o.reject(closed());
    this.outbox.clear();
    for (const r of this.requests.values()) {
      clearTimeout(r.timer);
      r.reject(closed());
    }
    this.requests.clear();
    if (this.ackTimer) clearTimeout(this.ackTimer);
    this.ackTimer = null;
    for (const t of this.typingTimers.values()) clearTimeout(t);
    this.typingTimers.clear();
    for (const w of this.liveWaiters.splice(0)) w.reject(closed());
    this.setState({ state: "closed" });
  }

  /**
   * Follows a conversation from `lastShown` (the highest number the app has shown; 0: from the start): it
   * is resumed at every connect. Conversations of messages that arrive are followed by themselves.
   */
  follow(conversationId: string, lastShown = 0): void {
    if (this.convs.has(conversationId)) return;
    const seq = new Sequence(lastShown);
    this.convs.set(conversationId, seq);
    if (this.conn?.welcomed) {
      seq.resuming = true;
      this.askHistory(this.conn, conversationId);
    }
  }

  /** The highest number shown per conversation: what an app stores to resume after a restart. */
  cursors(): Record<string, number> {
    const out: Record<string, number> = {};
    for (const [c, s] of this.convs) out[c] = s.last;
    return out;
  }

  /**
   * Sends a message. Resolves on `sent` (the message is durable); while unanswered it is sent again with the
   * same id after a reconnect, an `unavailable`, a `rate_limited` (after its wait) or `sendTimeoutMs` without
   * an answer. Fails at once with `queue_full` when `maxPendingSends` sends are waiting, and with the
   * gateway's code on a refusal that a retry cannot fix (`not_member`, `invalid_field`, ...).
   */
  send(conversationId: string, body: string, options: { id?: string } = {}): Promise<Sent> {
    if (this.stateNow === "closed") return Promise.reject(new ChatError("closed", "the client was closed"));
    const id = options.id ?? this.newSendId();
    if (!ID_PATTERN.test(id)) {
      return Promise.reject(new ChatError("invalid_field", "id must be 1 to 64 bytes of [A-Za-z0-9._:@-]"));
    }
    const bytes = new TextEncoder().encode(body).length;
    if (bytes < 1 || bytes > MAX_BODY_BYTES) {
      return Promise.reject(new ChatError("invalid_field", `body must be 1 to ${MAX_BODY_BYTES} bytes of UTF-8`));
    }
    const existing = this.outbox.get(id);
    if (existing) return existing.promise;
    if (this.outbox.size >= this.maxPendingSends) {
      return Promise.reject(
        new ChatError("queue_full", `${this.outbox.size} sends are waiting for an answer (maxPendingSends)`),
      );
    }
    if (!this.convs.has(conversationId)) this.convs.set(conversationId, new Sequence(0));
    let resolve!: (s: Sent) => void;
    let reject!: (e: Error) => void;
    const promise = new Promise<Sent>((res, rej) => {
      resolve = res;
      reject = rej;
    });
    const o: Outgoing = { id, conversationId, body, promise, resolve, reject, sentAt: null, notBefore: 0, attempts: 0 };
    this.outbox.set(id, o);
    if (this.conn?.welcomed) this.writeSend(this.conn, o);
    return promise;
  }

  /** Sends waiting for their answer (queued offline or in flight). */
  get pendingSends(): number {
    return this.outbox.size;
  }

  /** Marks everything up to `seq` read; kept and written at the next connect when offline. */
  read(conversationId: string, seq: number): void {
    if (!Number.isInteger(seq) || seq < 1) throw new ChatError("invalid_field", "seq must be at least 1");
    const before = this.reads.get(conversationId) ?? 0;
    this.reads.set(conversationId, Math.max(before, seq));
    if (this.conn?.welcomed) this.flushReads(this.conn);
  }

  /** Tells the other members' devices that the user is (or stopped) typing. Live only: dropped when offline. */
  typing(conversationId: string, typing = true): boolean {
    if (!this.conn?.welcomed) return false;
    return this.write(this.conn, { v: 1, type: "typing", conversation_id: conversationId, typing });
  }

  /**
   * One page of history, oldest first; does not change what is shown. Forwards (no `beforeSeq`): the oldest
   * messages with `seq > afterSeq`. Backwards (`beforeSeq`): the newest messages with `seq < beforeSeq` (and
   * `seq > afterSeq`), as a screen opening at the latest message pages.
   */
  async history(
    conversationId: string,
    options: { afterSeq?: number; beforeSeq?: number; limit?: number } = {},
  ): Promise<HistoryPage> {
    const afterSeq = options.afterSeq ?? 0;
    const limit = options.limit ?? 100;
    const frame: ClientFrame = {
      v: 1,
      type: "history",
      id: this.newRequestId(),
      conversation_id: conversationId,
      after_seq: afterSeq,
      limit,
    };
    if (options.beforeSeq !== undefined) frame.before_seq = options.beforeSeq;
    const f = (await this.request(frame)) as HistoryFrame;
    const messages = f.messages.map((m) => toMessage(m, "history"));
    const first = messages.length > 0 ? messages[0]!.seq : f.last_seq + 1;
    const top = messages.length > 0 ? messages[messages.length - 1]!.seq : afterSeq;
    const backwards = options.beforeSeq !== undefined;
    return {
      conversationId: f.conversation_id,
      messages,
      lastSeq: f.last_seq,
      hasMore: messages.length > 0 && (backwards ? first > afterSeq + 1 : top < f.last_seq),
      nextAfterSeq: top,
      nextBeforeSeq: first,
    };
  }

  /** Every page of history from `afterSeq` to the conversation's last number, as the protocol says to page. */
  async *historyPages(
    conversationId: string,
    options: { afterSeq?: number; limit?: number } = {},
  ): AsyncGenerator<HistoryPage> {
    let afterSeq = options.afterSeq ?? 0;
    for (;;) {
      const page = await this.history(conversationId, { afterSeq, limit: options.limit ?? MAX_HISTORY_LIMIT });
      yield page;
      if (!page.hasMore) return;
      afterSeq = page.nextAfterSeq;
    }
  }

  /**
   * Pages of history from the newest backwards (each page oldest first), down to the first message or to
   * `afterSeq`: what a chat screen loads as the user scrolls up. `beforeSeq` starts below a given number.
   */
  async *historyPagesBackwards(
    conversationId: string,
    options: { beforeSeq?: number; afterSeq?: number; limit?: number } = {},
  ): AsyncGenerator<HistoryPage> {
    let beforeSeq = options.beforeSeq ?? Number.MAX_SAFE_INTEGER;
    for (;;) {
      const page = await this.history(conversationId, {
        afterSeq: options.afterSeq ?? 0,
        beforeSeq,
        limit: options.limit ?? 50,
      });
      yield page;
      if (!page.hasMore) return;
      beforeSeq = page.nextBeforeSeq;
    }
  }

  /** A page of the user's conversations, most recently active first, with their unread counts. */
  async conversations(options: { limit?: number; pageToken?: string } = {}): Promise<ConversationListPage> {
    const frame: ClientFrame = { v: 1, type: "conversations", id: this.newRequestId(), limit: options.limit ?? 20 };
    if (options.pageToken !== undefined) frame.page_token = options.pageToken;
    const f = (await this.request(frame)) as ConversationsFrame;
    const page: ConversationListPage = {
      conversations: f.conversations.map((c) => ({
        conversationId: c.conversation_id,
        kind: c.kind,
        title: c.title,
        memberIds: c.member_ids,
        lastSeq: c.last_seq,
        lastActivityMs: c.last_activity_ms,
        readSeq: c.read_seq,
        unread: c.unread,
      })),
    };
    if (f.next_page_token !== undefined) page.nextPageToken = f.next_page_token;
    return page;
  }

  /** Every page of the user's conversation list, newest activity first. */
  async *conversationPages(options: { limit?: number } = {}): AsyncGenerator<ConversationListPage> {
    let pageToken: string | undefined;
    for (;;) {
      const page = await this.conversations(pageToken === undefined ? options : { ...options, pageToken });
      yield page;
      if (page.nextPageToken === undefined) return;
      pageToken = page.nextPageToken;
    }
  }

  /** The conversation's members, last number and read positions. */
  async conversation(conversationId: string): Promise<ConversationInfo> {
    const f = (await this.request({
      v: 1,
      type: "conversation",
      id: this.newRequestId(),
      conversation_id: conversationId,
    })) as ConversationFrame;
    return {
      conversationId: f.conversation_id,
      memberIds: f.member_ids,
      lastSeq: f.last_seq,
      readPositions: f.read_positions.map((p) => ({ userId: p.user_id, readSeq: p.read_seq })),
    };
  }

  // ---- the connection loop ----

  private async run(): Promise<void> {
    let attempt = 0;
    while (this.running) {
      const url = this.urls[this.nextUrl % this.urls.length]!;
      this.nextUrl += 1;
      this.setState({ state: "connecting", url, attempt });
      let token: string;
      try {
        token = await this.currentToken();
      } catch (e) {
        this.emit("error", new ChatError("token", `the token provider failed: ${String(e)}`, true));
        await this.pause(backoffDelay(this.backoff, attempt++), url, undefined, attempt);
        continue;
      }
      if (!this.running) break;
      const end = await this.session(url, token);
      if (!this.running) break;
      this.stats.closeCodes.push(end.code);
      if (end.live) attempt = 0;
      if (end.code === CloseCode.REPLACED) {
        // The same device connected elsewhere: reconnecting would take the device back from it.
        this.running = false;
        this.setState({ state: "replaced", url, closeCode: end.code, closeReason: end.reason });
        for (const w of this.liveWaiters.splice(0)) w.reject(new ChatError("replaced", "the device connected elsewhere"));
        break;
      }
      let delay: number;
      if (end.code === CloseCode.TOKEN_EXPIRED) {
        this.token = null;
        delay = end.live ? 0 : backoffDelay(this.backoff, attempt++);
      } else if (end.planned) {
        delay = 0;
      } else {
        if (!end.opened) {
          // Refused before the upgrade (a browser cannot tell a 401 from a dead gateway): after a failed round
          // of every URL, the token may be the cause; ask the provider again.
          this.failedOpens += 1;
          if (this.failedOpens >= this.urls.length) {
            this.token = null;
            this.failedOpens = 0;
          }
        }
        delay = backoffDelay(this.backoff, attempt++);
        if (end.code === CloseCode.RATE_LIMITED) {
          delay = Math.max(delay, this.rateLimitedBackoffMs + Math.round(Math.random() * this.rateLimitedBackoffMs));
        }
      }
      if (delay > 0) await this.pause(delay, url, end, attempt);
    }
  }

  private async pause(delayMs: number, url: string, end: SessionEnd | undefined, attempt: number): Promise<void> {
    if (!this.running) return;
    const change: StateChange = { state: "waiting", url, delayMs, attempt };
    if (end) {
      change.closeCode = end.code;
      change.closeReason = end.reason;
    }
    this.setState(change);
    await new Promise<void>((resolve) => {
      const timer = setTimeout(done, delayMs);
      const self = this;
      function done() {
        clearTimeout(timer);
        self.wake = null;
        resolve();
      }
      this.wake = done;
    });
  }

  private async currentToken(): Promise<string> {
    const now = Date.now();
    if (this.token !== null && (this.tokenExp === null || this.tokenExp - now > 1_000)) return this.token;
    return this.fetchToken();
  }

  private async fetchToken(): Promise<string> {
    const token = await this.tokenProvider();
    if (typeof token !== "string" || token.length === 0) throw new Error("the token provider answered no token");
    this.token = token;
    this.tokenExp = tokenExpiryMs(token);
    this.tokenObtainedAt = Date.now();
    return token;
  }

  private endpoint(base: string, token: string): string {
    const url = new URL(base);
    if (url.pathname === "" || url.pathname === "/") url.pathname = "/v1/ws";
    url.searchParams.set("device_id", this.deviceId);
    // Browsers cannot set headers on a WebSocket: the token goes in the query (docs/protocol.md).
    url.searchParams.set("access_token", token);
    return url.toString();
  }

  /** One connection, from its opening to its close; resolves with how it ended. */
  private session(url: string, token: string): Promise<SessionEnd> {
    return new Promise((resolve) => {
      let ws: WebSocketLike;
      try {
        ws = new this.WS(this.endpoint(url, token));
      } catch (e) {
        this.emit("error", new ChatError("connect", `cannot open ${url}: ${String(e)}`, true));
        resolve({ code: CloseCode.ABNORMAL, reason: String(e), opened: false, live: false, planned: false });
        return;
      }
      const conn: Connection = {
        ws,
        url,
        serial: ++this.serial,
        opened: false,
        welcomed: false,
        live: false,
        planned: false,
        lastReceived: Date.now(),
        lastPing: Date.now(),
        tick: null,
        timers: [],
      };
      this.conn = conn;
      conn.timers.push(
        setTimeout(() => {
          if (!conn.welcomed) this.closeSocket(conn, CloseCode.NORMAL, "connect timeout");
        }, CONNECT_TIMEOUT_MS),
      );
      let ended = false;
      ws.onopen = () => {
        conn.opened = true;
      };
      ws.onmessage = (ev) => {
        if (this.conn !== conn) return;
        conn.lastReceived = Date.now();
        if (typeof ev.data === "string") this.onText(conn, ev.data);
      };
      ws.onerror = () => {
        // The close event follows with the code; nothing to do here.
      };
      ws.onclose = (ev) => {
        if (ended) return;
        ended = true;
        this.endConnection(conn);
        if (this.conn === conn) this.conn = null;
        resolve({ code: ev.code, reason: ev.reason, opened: conn.opened, live: conn.live, planned: conn.planned });
      };
    });
  }

  private closeSocket(conn: Connection, code: number, reason: string): void {
    try {
      conn.ws.close(code, reason);
    } catch {
      // Already closed.
    }
  }

  /** What ends with a connection: its timers; what was written on it counts as not written. */
  private endConnection(conn: Connection): void {
    if (conn.tick) clearInterval(conn.tick);
    conn.tick = null;
    for (const t of conn.timers) clearTimeout(t);
    conn.timers = [];
    for (const o of this.outbox.values()) o.sentAt = null;
    for (const r of this.requests.values()) if (r.sentOn === conn.serial) r.sentOn = null;
    for (const s of this.convs.values()) s.asking = null;
    this.internal.clear();
  }

  private setState(change: StateChange): void {
    this.stateNow = change.state;
    this.emit("state", change);
  }

  // ---- frames from the gateway ----

  private onText(conn: Connection, text: string): void {
    const frame = parseServerFrame(text);
    if (!frame) return;
    if (this.hooks?.incoming && !this.hooks.incoming(frame as unknown as Record<string, unknown>)) return;
    switch (frame.type) {
      case "welcome":
        conn.welcomed = true;
        this.user = frame.user_id;
        this.failedOpens = 0;
        this.stats.sessions += 1;
        this.setState({ state: "syncing", url: conn.url, sessionId: frame.session_id });
        this.onWelcome(conn);
        return;
      case "synced":
        conn.live = true;
        this.setState({ state: "live", url: conn.url, inboxCount: frame.count });
        for (const w of this.liveWaiters.splice(0)) w.resolve();
        return;
      case "message":
        this.arrive(toMessage(frame, frame.inbox === true ? "inbox" : "pushed"));
        return;
      case "sent":
        this.onSent(frame);
        return;
      case "history":
        this.onHistory(conn, frame);
        return;
      case "conversation":
      case "conversations": {
        const r = this.takeRequest(frame.id);
        r?.resolve(frame);
        return;
      }
      case "receipt":
        this.emit("receipt", {
          conversationId: frame.conversation_id,
          userId: frame.user_id,
          deviceId: frame.device_id,
          kind: frame.kind,
          upToSeq: frame.up_to_seq,
        });
        return;
      case "typing":
        this.onTyping(frame.conversation_id, frame.user_id, frame.device_id, frame.typing);
        return;
      case "error":
        this.onError(conn, frame);
        return;
      case "pong":
        return;
    }
  }

  /** After `welcome`: resume every conversation (rule 4), then write what is waiting. */
  private onWelcome(conn: Connection): void {
    for (const [conversationId, seq] of this.convs) {
      seq.resuming = true;
      this.askHistory(conn, conversationId);
    }
    const now = Date.now();
    for (const o of this.outbox.values()) if (o.notBefore <= now) this.writeSend(conn, o);
    for (const r of this.requests.values()) {
      if (r.notBefore <= now && this.write(conn, r.frame)) r.sentOn = conn.serial;
    }
    this.flushReads(conn);
    this.flushAcks();
    conn.tick = setInterval(() => this.tick(conn), TICK_MS);
    this.scheduleRenewal(conn);
  }

  /** Before the token expires: a new one from the provider, and a new connection with it. */
  private scheduleRenewal(conn: Connection): void {
    if (this.refreshBeforeExpiryMs <= 0 || this.tokenExp === null) return;
    const now = Date.now();
    const lifetime = this.tokenExp - this.tokenObtainedAt;
    // A token shorter-lived than the margin is renewed halfway through its life, not at once.
    const lead = Math.min(this.refreshBeforeExpiryMs, lifetime / 2);
    const at = this.tokenExp - lead;
    if (at <= now) return;
    conn.timers.push(
      setTimeout(() => {
        void this.fetchToken().then(
          () => {
            if (this.conn !== conn) return;
            conn.planned = true;
            this.closeSocket(conn, CloseCode.NORMAL, "token renewal");
          },
          (e) => this.emit("error", new ChatError("token", `the token provider failed: ${String(e)}`, true)),
        );
      }, at - now),
    );
  }

  private tick(conn: Connection): void {
    if (this.conn !== conn || !conn.welcomed) return;
    const now = Date.now();
    for (const [conversationId, seq] of this.convs) {
      if (seq.asking && now - seq.asking.at < this.requestTimeoutMs) continue;
      if (seq.resuming || seq.gapRequest(now, this.gapGraceMs, MAX_HISTORY_LIMIT)) this.askHistory(conn, conversationId);
    }
    for (const o of this.outbox.values()) {
      const due = o.sentAt === null ? now >= o.notBefore : now - o.sentAt >= this.sendTimeoutMs;
      if (due) this.writeSend(conn, o);
    }
    for (const r of this.requests.values()) {
      if (r.sentOn === null && now >= r.notBefore && this.write(conn, r.frame)) r.sentOn = conn.serial;
    }
    if (now - conn.lastReceived >= DEAD_AFTER_MS) {
      this.closeSocket(conn, CloseCode.NORMAL, "no answer to pings");
    } else if (now - conn.lastReceived >= PING_AFTER_MS && now - conn.lastPing >= PING_AFTER_MS) {
      conn.lastPing = now;
      this.write(conn, { v: 1, type: "ping", id: "keepalive" });
    }
  }

  /** Rule 1 and 2 for one arrival; shows what became contiguous and schedules its acknowledgement. */
  private arrive(m: ChatMessage): void {
    this.stats.arrivals[m.via] += 1;
    let seq = this.convs.get(m.conversationId);
    if (!seq) {
      seq = new Sequence(0);
      this.convs.set(m.conversationId, seq);
    }
    if (m.via === "inbox" && m.seq <= seq.acked) {
      // The inbox still holds a number this client acknowledged: the acknowledgement was lost (a dropped
      // connection, a failed write). Acknowledge again, or the inbox hands it out at every connect.
      seq.acked = m.seq - 1;
      this.scheduleAck();
    }
    const accepted = seq.accept(m, Date.now());
    if (accepted.duplicate) {
      this.stats.duplicatesDropped += 1;
      return;
    }
    for (const shown of accepted.shown) {
      this.stats.shown += 1;
      this.emit("message", shown);
    }
    if (accepted.shown.length > 0) this.scheduleAck();
  }

  private onSent(f: SentFrame): void {
    const o = this.outbox.get(f.id);
    if (!o) return; // answered already (a resend's second answer)
    this.outbox.delete(f.id);
    this.arrive({
      conversationId: f.conversation_id,
      seq: f.seq,
      messageId: f.message_id,
      senderId: this.user ?? "",
      body: o.body,
      sentAtMs: f.sent_at_ms,
      via: "own",
    });
    o.resolve({
      id: f.id,
      conversationId: f.conversation_id,
      messageId: f.message_id,
      seq: f.seq,
      sentAtMs: f.sent_at_ms,
      duplicate: f.duplicate,
      attempts: o.attempts,
    });
  }

  private onHistory(conn: Connection, f: HistoryFrame): void {
    const mine = this.internal.get(f.id);
    if (!mine) {
      this.takeRequest(f.id)?.resolve(f);
      return;
    }
    this.internal.delete(f.id);
    const seq = this.convs.get(mine.conversationId);
    if (!seq) return;
    if (seq.asking?.id === f.id) seq.asking = null;
    for (const m of f.messages) this.arrive(toMessage(m, "history"));
    // Rule 4: while resuming, read on as long as the conversation's last number is ahead of what is shown.
    seq.resuming = seq.resuming && f.messages.length > 0 && seq.last < f.last_seq;
    if (seq.resuming) this.askHistory(conn, mine.conversationId);
  }

  private onError(conn: Connection, f: ErrorFrame): void {
    const now = Date.now();
    const id = f.id;
    const o = id !== undefined ? this.outbox.get(id) : undefined;
    if (o) {
      if (f.code === "rate_limited") {
        o.notBefore = now + rateLimitWaitMs(f, 1_000);
        o.sentAt = null;
      } else if (f.retryable) {
        o.notBefore = now + backoffDelay({ initialMs: 250, maxMs: 5_000, factor: 2 }, o.attempts - 1);
        o.sentAt = null;
      } else {
        this.outbox.delete(o.id);
        o.reject(new ChatError(f.code, f.message, false));
      }
      return;
    }
    const mine = id !== undefined ? this.internal.get(id) : undefined;
    if (mine && id !== undefined) {
      this.internal.delete(id);
      const seq = this.convs.get(mine.conversationId);
      if (!seq) return;
      if (seq.asking?.id === id) seq.asking = null;
      if (f.code === "beyond_retention" && typeof f.first_seq === "number") {
        // History no longer holds what was missed: say so, and continue from there (rule 4).
        const skipped = seq.skipTo(f.first_seq, now);
        if (skipped) {
          this.emit("lost", { conversationId: mine.conversationId, fromSeq: skipped.from, toSeq: skipped.to });
          for (const m of skipped.shown) {
            this.stats.shown += 1;
            this.emit("message", m);
          }
          this.scheduleAck();
        }
        if (seq.resuming) this.askHistory(conn, mine.conversationId);
      } else if (f.retryable) {
        // Asked again by the tick after a pause (the request counts as in flight until then).
        const wait = f.code === "rate_limited" ? rateLimitWaitMs(f, 1_000) : 1_000;
        seq.asking = { id: "", at: now - this.requestTimeoutMs + wait };
      } else {
        seq.resuming = false;
        seq.held.clear();
        seq.gapSince = null;
        this.emit("error", new ChatError(f.code, `${mine.conversationId}: ${f.message}`));
      }
      return;
    }
    const r = id !== undefined ? this.requests.get(id) : undefined;
    if (r) {
      if (f.retryable && r.retries < 5) {
        r.retries += 1;
        r.sentOn = null;
        r.notBefore = now + (f.code === "rate_limited" ? rateLimitWaitMs(f, 1_000) : 500 * r.retries);
      } else {
        this.takeRequest(r.frame.id);
        r.reject(new ChatError(f.code, f.message, f.retryable, f.first_seq));
      }
      return;
    }
    if (id === undefined && f.retryable) {
      // A `delivered` or `read` without id failed: write every acknowledgement again.
      for (const s of this.convs.values()) s.acked = 0;
      this.scheduleAck();
    }
    this.emit("error", new ChatError(f.code, f.message, f.retryable));
  }

  private onTyping(conversationId: string, userId: string, deviceId: string, typing: boolean): void {
    const key = `${conversationId}\n${userId}\n${deviceId}`;
    const old = this.typingTimers.get(key);
    if (old) clearTimeout(old);
    this.typingTimers.delete(key);
    if (typing) {
      this.typingTimers.set(
        key,
        setTimeout(() => {
          this.typingTimers.delete(key);
          this.emit("typing", { conversationId, userId, deviceId, typing: false, expired: true });
        }, this.typingTimeoutMs),
      );
    }
    this.emit("typing", { conversationId, userId, deviceId, typing, expired: false });
  }

  // ---- frames to the gateway ----

  private write(conn: Connection, frame: ClientFrame): boolean {
    if (this.conn !== conn || conn.ws.readyState !== 1) return false;
    if (this.hooks?.outgoing && !this.hooks.outgoing(frame as unknown as Record<string, unknown>)) return true;
    try {
      conn.ws.send(JSON.stringify(frame));
      return true;
    } catch {
      return false;
    }
  }

  private writeSend(conn: Connection, o: Outgoing): void {
    const frame: ClientFrame = { v: 1, type: "send", id: o.id, conversation_id: o.conversationId, body: o.body };
    if (!this.write(conn, frame)) return;
    if (o.attempts > 0) this.stats.resends += 1;
    o.attempts += 1;
    o.sentAt = Date.now();
  }

  private askHistory(conn: Connection, conversationId: string): void {
    const seq = this.convs.get(conversationId);
    if (!seq) return;
    const first = seq.firstHeld();
    // With numbers held above a gap, only the missing ones (rule 2); otherwise a page (rule 4).
    const limit = first === null ? this.resumePageSize : Math.max(1, Math.min(MAX_HISTORY_LIMIT, first - seq.last - 1));
    const id = this.newRequestId();
    const frame: ClientFrame = {
      v: 1,
      type: "history",
      id,
      conversation_id: conversationId,
      after_seq: seq.last,
      limit,
    };
    if (!this.write(conn, frame)) return;
    this.stats.historyRequests += 1;
    this.internal.set(id, { conversationId, resume: seq.resuming });
    seq.asking = { id, at: Date.now() };
  }

  private scheduleAck(): void {
    if (this.ackTimer) return;
    this.ackTimer = setTimeout(() => {
      this.ackTimer = null;
      this.flushAcks();
    }, this.ackDelayMs);
  }

  /** Rule 3: one `delivered` per conversation, for the highest contiguous number shown. */
  private flushAcks(): void {
    const conn = this.conn;
    if (!conn?.welcomed) return;
    for (const [conversationId, seq] of this.convs) {
      if (seq.last <= seq.acked) continue;
      if (!this.write(conn, { v: 1, type: "delivered", conversation_id: conversationId, seq: seq.last })) return;
      this.stats.acksSent += 1;
      seq.acked = seq.last;
    }
  }

  private flushReads(conn: Connection): void {
    for (const [conversationId, upTo] of [...this.reads]) {
      if (!this.write(conn, { v: 1, type: "read", conversation_id: conversationId, seq: upTo })) return;
      this.reads.delete(conversationId);
    }
  }

  private request(frame: ClientFrame & { id: string }): Promise<ServerFrame> {
    if (this.stateNow === "closed") return Promise.reject(new ChatError("closed", "the client was closed"));
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.requests.delete(frame.id);
        reject(new ChatError("timeout", `${frame.type} unanswered after ${this.requestTimeoutMs} ms`, true));
      }, this.requestTimeoutMs);
      const r: AppRequest = { frame, resolve, reject, sentOn: null, notBefore: 0, retries: 0, timer };
      this.requests.set(frame.id, r);
      const conn = this.conn;
      if (conn?.welcomed && this.write(conn, frame)) r.sentOn = conn.serial;
    });
  }

  private takeRequest(id: string): AppRequest | undefined {
    const r = this.requests.get(id);
    if (!r) return undefined;
    clearTimeout(r.timer);
    this.requests.delete(id);
    return r;
  }

  private newRequestId(): string {
    this.requestSerial += 1;
    return `q${this.requestSerial}`;
  }

  /**
   * A client id unique to this device: the time first, then a counter, randomness and the device. Ids that
   * grow with time let the server tell a new send from a retry without reading its store (an id past
   * every earlier one of the user's in the conversation is new).
   */
  private newSendId(): string {
    this.sendSerial += 1;
    const random = new Uint32Array(1);
    const c = (globalThis as { crypto?: { getRandomValues?: (a: Uint32Array) => Uint32Array } }).crypto;
    if (c?.getRandomValues) c.getRandomValues(random);
    else random[0] = Math.floor(Math.random() * 0xffffffff);
    const id = `${Date.now().toString(36)}.${this.sendSerial.toString(36)}.${random[0]!.toString(36)}`;
    return `${id}:${this.deviceId.slice(0, 64 - id.length - 1)}`;
  }
}

function toMessage(m: WireMessage, via: Via): ChatMessage {
  return {
    conversationId: m.conversation_id,
    seq: m.seq,
    messageId: m.message_id,
    senderId: m.sender_id,
    body: m.body,
    sentAtMs: m.sent_at_ms,
    via,
  };
}
