// The wire format of the client protocol, version 1 (docs/protocol.md). These types stop at the SDK's edge:
// the app sees the camelCase types of `types.ts`.

export const PROTOCOL_VERSION = 1;

/** A message as the gateway sends it, in a `message` frame or in a `history` page. */
export interface WireMessage {
  conversation_id: string;
  message_id: string;
  seq: number;
  sender_id: string;
  body: string;
  sent_at_ms: number;
  /** Present (true) when the message came from the device's inbox rather than live. */
  inbox?: boolean;
}

export interface WelcomeFrame {
  v: 1;
  type: "welcome";
  user_id: string;
  device_id: string;
  session_id: string;
}

export interface SyncedFrame {
  v: 1;
  type: "synced";
  count: number;
}

export interface SentFrame {
  v: 1;
  type: "sent";
  id: string;
  conversation_id: string;
  message_id: string;
  seq: number;
  sent_at_ms: number;
  duplicate: boolean;
}

export interface MessageFrame extends WireMessage {
  v: 1;
  type: "message";
}

export interface HistoryFrame {
  v: 1;
  type: "history";
  id: string;
  conversation_id: string;
  messages: WireMessage[];
  last_seq: number;
}

export interface ReceiptFrame {
  v: 1;
  type: "receipt";
  conversation_id: string;
  user_id: string;
  device_id: string;
  kind: "delivered" | "read";
  up_to_seq: number;
}

export interface TypingFrame {
  v: 1;
  type: "typing";
  conversation_id: string;
  user_id: string;
  device_id: string;
  typing: boolean;
}

export interface ConversationFrame {
  v: 1;
  type: "conversation";
  id: string;
  conversation_id: string;
  member_ids: string[];
  last_seq: number;
  read_positions: { user_id: string; read_seq: number }[];
}

export interface ConversationsFrame {
  v: 1;
  type: "conversations";
  id: string;
  conversations: {
    conversation_id: string;
    kind: "direct" | "group";
    title: string;
    member_ids: string[];
    last_seq: number;
    last_activity_ms: number;
    read_seq: number;
    unread: number;
  }[];
  /** Absent on the last page. */
  next_page_token?: string;
}

export interface ErrorFrame {
  v: 1;
  type: "error";
  id?: string;
  code: string;
  message: string;
  retryable: boolean;
  /** With `beyond_retention`: the first number history still holds. */
  first_seq?: number;
  /** With `rate_limited`: how long to wait before the next frame, in milliseconds. */
  retry_after_ms?: number;
}

export interface PongFrame {
  v: 1;
  type: "pong";
  id?: string;
}

export type ServerFrame =
  | WelcomeFrame
  | SyncedFrame
  | SentFrame
  | MessageFrame
  | HistoryFrame
  | ReceiptFrame
  | TypingFrame
  | ConversationFrame
  | ConversationsFrame
  | ErrorFrame
  | PongFrame;

/** A frame the client sends. */
export type ClientFrame =
  | { v: 1; type: "send"; id: string; conversation_id: string; body: string }
  | { v: 1; type: "delivered"; conversation_id: string; seq: number }
  | { v: 1; type: "history"; id: string; conversation_id: string; after_seq: number; before_seq?: number; limit: number }
  | { v: 1; type: "read"; conversation_id: string; seq: number }
  | { v: 1; type: "conversation"; id: string; conversation_id: string }
  | { v: 1; type: "conversations"; id: string; limit: number; page_token?: string }
  | { v: 1; type: "typing"; conversation_id: string; typing: boolean }
  | { v: 1; type: "ping"; id?: string };

/** Close codes of the protocol (docs/protocol.md, "Close codes"). */
export const CloseCode = {
  NORMAL: 1000,
  GOING_AWAY: 1001,
  PROTOCOL_ERROR: 1002,
  /** No close frame: the connection dropped (set by WebSocket implementations, never sent). */
  ABNORMAL: 1006,
  INVALID_PAYLOAD: 1007,
  TOO_BIG: 1009,
  REPLACED: 4000,
  TOKEN_EXPIRED: 4001,
  IDLE: 4002,
  SLOW_CONSUMER: 4008,
  RATE_LIMITED: 4029,
} as const;

/** Client ids of sends and user/device ids: 1 to 64 bytes of `[A-Za-z0-9._:@-]`. */
export const ID_PATTERN = /^[A-Za-z0-9._:@-]{1,64}$/;

/** Largest body of a send, in bytes of UTF-8. */
export const MAX_BODY_BYTES = 16_384;

/** Largest `limit` of a `history` request. */
export const MAX_HISTORY_LIMIT = 500;

/** Parses one text frame from the gateway; `null` when it is not a protocol frame. */
export function parseServerFrame(text: string): ServerFrame | null {
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch {
    return null;
  }
  if (typeof value !== "object" || value === null) return null;
  const frame = value as { v?: unknown; type?: unknown };
  if (frame.v !== PROTOCOL_VERSION || typeof frame.type !== "string") return null;
  return value as ServerFrame;
}

/**
 * The wait a `rate_limited` error asks for, in milliseconds: its `retry_after_ms` field, or, from a gateway
 * older than that field, the number in its `message` ("too many frames; retry in 120 ms").
 */
export function rateLimitWaitMs(frame: ErrorFrame, fallbackMs: number): number {
  const field: unknown = frame.retry_after_ms;
  if (typeof field === "number" && Number.isFinite(field) && field >= 0) return field;
  const m = /retry in (\d+)\s*ms/.exec(frame.message ?? "");
  return m ? Number(m[1]) : fallbackMs;
}
