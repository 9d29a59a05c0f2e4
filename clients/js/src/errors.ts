// The SDK's one error type: a stable code (the protocol's error codes, plus the SDK's own) and a message.

/**
 * Codes: the protocol's (`not_member`, `invalid_field`, `conversation_not_found`, `beyond_retention`, ...)
 * and the SDK's: `queue_full` (too many sends waiting), `closed` (the client was closed), `timeout`
 * (a request unanswered in time), `replaced` (the device connected elsewhere), `no_websocket`.
 */
export class ChatError extends Error {
  readonly code: string;
  readonly retryable: boolean;
  /** With `beyond_retention`: the first number history still holds. */
  readonly firstSeq: number | undefined;

  constructor(code: string, message: string, retryable = false, firstSeq?: number) {
    super(`${code}: ${message}`);
    this.name = "ChatError";
    this.code = code;
    this.retryable = retryable;
    this.firstSeq = firstSeq;
  }
}
