// The chat platform's TypeScript SDK: `ChatClient` follows the client rules of docs/protocol.md for the app.

export { ChatClient, type ClientStats } from "./client.js";
export { ChatError } from "./errors.js";
export { backoffDelay, type BackoffPolicy } from "./backoff.js";
export { tokenExpiryMs } from "./token.js";
export { Sequence } from "./sequence.js";
export { CloseCode, PROTOCOL_VERSION, MAX_BODY_BYTES, MAX_HISTORY_LIMIT, rateLimitWaitMs } from "./protocol.js";
export type { ClientFrame, ServerFrame, WireMessage } from "./protocol.js";
export type * from "./types.js";
