// What the app sees: messages, receipts, typing indicators, connection states, and the client's options.

/**
 * How a message reached this device (the same distinction as the test harness's `Channel` in
 * clients/rust/src/device.rs): pushed live, sent from the device's inbox (at connect or at a resync), read from
 * history (resuming after a reconnect, or filling a gap), or the answer to this device's own send.
 */
export type Via = "pushed" | "inbox" | "history" | "own";

export interface ChatMessage {
  conversationId: string;
  seq: number;
  messageId: string;
  senderId: string;
  body: string;
  sentAtMs: number;
  via: Via;
}

/** The answer to a send: the message is durable (in the log and the store). */
export interface Sent {
  /** The client id of the send (the same on every retry). */
  id: string;
  conversationId: string;
  messageId: string;
  seq: number;
  sentAtMs: number;
  /** True when the gateway had this id already (a retry): the answer is the original message's. */
  duplicate: boolean;
  /** How many times the SDK put the send on the wire (1 when it was answered at the first try). */
  attempts: number;
}

export interface Receipt {
  conversationId: string;
  userId: string;
  deviceId: string;
  kind: "delivered" | "read";
  upToSeq: number;
}

export interface Typing {
  conversationId: string;
  userId: string;
  deviceId: string;
  typing: boolean;
  /** True when the SDK ended the indicator itself: no new one came within `typingTimeoutMs`. */
  expired: boolean;
}

/**
 * - `idle`: not started (or stopped before the first connect);
 * - `connecting`: opening a WebSocket (after asking the token provider if needed);
 * - `syncing`: upgraded, the inbox is coming; history is read to resume each conversation;
 * - `live`: `synced` came; messages are pushed as they are sent;
 * - `waiting`: disconnected, waiting `delayMs` before the next attempt;
 * - `replaced`: the same device connected elsewhere (close 4000); not reconnecting (call `connect()` again);
 * - `closed`: `close()` was called.
 */
export type ConnectionState = "idle" | "connecting" | "syncing" | "live" | "waiting" | "replaced" | "closed";

export interface StateChange {
  state: ConnectionState;
  /** The gateway URL of this attempt or session. */
  url?: string;
  /** With `waiting`: how long until the next attempt. */
  delayMs?: number;
  /** With `waiting`, `replaced`: the close code that ended the last connection (1006: dropped). */
  closeCode?: number;
  closeReason?: string;
  /** Connection attempts since the last session that reached `live`. */
  attempt?: number;
  /** With `syncing` and `live`: the gateway's session id. */
  sessionId?: string;
  /** With `live`: the number of inbox messages the gateway sent at connect. */
  inboxCount?: number;
}

/** Numbers the app will never get: history no longer holds them (`beyond_retention`). */
export interface Lost {
  conversationId: string;
  fromSeq: number;
  toSeq: number;
}

export interface HistoryPage {
  conversationId: string;
  /** Oldest first, no gap. */
  messages: ChatMessage[];
  /** The conversation's latest number. */
  lastSeq: number;
  /**
   * Whether more messages lie in the page's direction: after it when paging forwards (ask again with
   * `afterSeq: nextAfterSeq`), before it when paging backwards (ask again with `beforeSeq: nextBeforeSeq`).
   */
  hasMore: boolean;
  nextAfterSeq: number;
  /** The first number of this page (the `beforeSeq` of the page before it); `lastSeq + 1` when empty. */
  nextBeforeSeq: number;
}

export interface ConversationInfo {
  conversationId: string;
  memberIds: string[];
  lastSeq: number;
  readPositions: { userId: string; readSeq: number }[];
}

/** A conversation in the user's list (`ChatClient.conversations`). */
export interface ConversationSummary {
  conversationId: string;
  kind: "direct" | "group";
  title: string;
  memberIds: string[];
  /** The conversation's last number (0: no message yet). */
  lastSeq: number;
  /** The last message's time, or the creation's when there is none (ms since the epoch). */
  lastActivityMs: number;
  /** The user's read position (0: never read). */
  readSeq: number;
  /** `lastSeq - readSeq`. */
  unread: number;
}

/** A page of the user's conversations, most recently active first. */
export interface ConversationListPage {
  conversations: ConversationSummary[];
  /** Pass it as `pageToken` for the next page; absent on the last page. */
  nextPageToken?: string;
}

export interface ClientEvents {
  message: ChatMessage;
  receipt: Receipt;
  typing: Typing;
  state: StateChange;
  lost: Lost;
  /** Something went wrong that no promise reports (a token provider failure, an error frame without id). */
  error: Error;
}

/** The part of the WebSocket interface the SDK uses: the browser's, Node 22's, and the `ws` package's. */
export interface WebSocketLike {
  readonly readyState: number;
  onopen: ((ev: unknown) => void) | null;
  onmessage: ((ev: { data: unknown }) => void) | null;
  onclose: ((ev: { code: number; reason: string }) => void) | null;
  onerror: ((ev: unknown) => void) | null;
  send(data: string): void;
  close(code?: number, reason?: string): void;
}

export type WebSocketConstructor = new (url: string) => WebSocketLike;

/**
 * Test hooks on the SDK's transport: return `false` to drop a frame as if the network lost it. The SDK
 * does not know: a dropped outgoing frame counts as sent. For tests of the client's rules, never for apps.
 */
export interface TransportHooks {
  outgoing?: (frame: Record<string, unknown>) => boolean;
  incoming?: (frame: Record<string, unknown>) => boolean;
}

export interface ClientOptions {
  /** Gateway URLs (`wss://host` or `wss://host/v1/ws`), tried in turn. */
  urls: string[];
  deviceId: string;
  /** Answers a valid token (a JWT with `sub` and `exp`); called at connect, after 4001, and before `exp`. */
  token: () => Promise<string> | string;
  /** The WebSocket class; default `globalThis.WebSocket` (browsers, Node 22). In Node 20 pass `ws`'s. */
  WebSocket?: WebSocketConstructor;
  /** Known conversations and the highest number the app has shown in each (0: none), e.g. from storage. */
  conversations?: Record<string, number>;
  /** Reconnect backoff: the first delay, the most, and the growth factor; each delay is jittered. */
  backoff?: { initialMs?: number; maxMs?: number; factor?: number };
  /** After close 4029: the least wait before reconnecting (default 5000). */
  rateLimitedBackoffMs?: number;
  /** How long a gap may stay open before its numbers are read from history (default 500). */
  gapGraceMs?: number;
  /** How long `delivered` acknowledgements are batched (default 250). */
  ackDelayMs?: number;
  /** How long a send may stay unanswered on a live connection before it is sent again (default 10000). */
  sendTimeoutMs?: number;
  /** Most sends waiting for their answer, queued offline or in flight; past it `send` fails (default 1000). */
  maxPendingSends?: number;
  /** How long a request (history page, conversation) waits before it fails (default 30000). */
  requestTimeoutMs?: number;
  /** How long before the token's `exp` a new one is fetched and the connection renewed (default 30000; 0: never). */
  refreshBeforeExpiryMs?: number;
  /** Messages per history page when resuming (default 200, at most 500). */
  resumePageSize?: number;
  /** When a typing indicator with no follow-up is ended (default 6000). */
  typingTimeoutMs?: number;
  /** Test hooks on the transport (see `TransportHooks`). */
  transportHooks?: TransportHooks;
}
