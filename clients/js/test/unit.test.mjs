// The SDK's pure parts, without I/O: the ordering rules, the backoff, reading a token's expiry.

import assert from "node:assert/strict";
import { test } from "node:test";

import { Sequence, backoffDelay, rateLimitWaitMs, tokenExpiryMs } from "../dist/index.js";
import { signToken } from "./harness.mjs";

/**
 * @param {number} seq
 * @param {import("../dist/index.js").Via} via
 * @returns {import("../dist/index.js").ChatMessage}
 */
const msg = (seq, via = "pushed") => ({
  conversationId: "c",
  seq,
  messageId: `m${seq}`,
  senderId: "a",
  body: `b${seq}`,
  sentAtMs: 0,
  via,
});

test("a sequence drops what it showed, holds what is above a gap, and shows in order", () => {
  const s = new Sequence(0);
  assert.deepEqual(s.accept(msg(1), 0).shown.map((m) => m.seq), [1]);
  assert.equal(s.accept(msg(1, "inbox"), 0).duplicate, true);
  assert.deepEqual(s.accept(msg(3), 10).shown, []);
  assert.equal(s.accept(msg(3, "history"), 11).duplicate, true, "a held number is not held twice");
  assert.equal(s.gapRequest(100, 500, 500), null, "within the grace");
  assert.deepEqual(s.gapRequest(510, 500, 500), { afterSeq: 1, limit: 1 }, "exactly the missing range");
  assert.deepEqual(s.accept(msg(2, "history"), 600).shown.map((m) => m.seq), [2, 3]);
  assert.equal(s.gapSince, null);
  assert.equal(s.last, 3);
});

test("beyond retention: a sequence skips what history lost and shows what it held", () => {
  const s = new Sequence(2);
  s.accept(msg(9), 0);
  const skipped = s.skipTo(8, 1);
  assert.deepEqual({ from: skipped.from, to: skipped.to }, { from: 3, to: 7 });
  assert.deepEqual(skipped.shown.map((m) => m.seq), [], "8 is still missing");
  assert.deepEqual(s.accept(msg(8, "history"), 2).shown.map((m) => m.seq), [8, 9]);
  assert.equal(s.skipTo(3, 3), null);
});

test("backoff grows, is capped, and is jittered between half and all", () => {
  const p = { initialMs: 100, maxMs: 1000, factor: 2 };
  assert.equal(backoffDelay(p, 0, () => 0), 50);
  assert.equal(backoffDelay(p, 0, () => 1), 100);
  assert.equal(backoffDelay(p, 3, () => 1), 800);
  assert.equal(backoffDelay(p, 10, () => 1), 1000);
  assert.equal(backoffDelay(p, 10, () => 0), 500);
});

test("a token's expiry is read from its claims", () => {
  assert.equal(tokenExpiryMs(signToken({ sub: "a", exp: 1700000000 }, "s")), 1700000000000);
  assert.equal(tokenExpiryMs(signToken({ sub: "a" }, "s")), null);
  assert.equal(tokenExpiryMs("not a token"), null);
});

test("a rate_limited wait is read from its field, else from its message", () => {
  const refusal = (extra) => ({ v: 1, type: "error", code: "rate_limited", retryable: true, ...extra });
  assert.equal(rateLimitWaitMs(refusal({ message: "too many frames; retry in 120 ms", retry_after_ms: 120 }), 1_000), 120);
  assert.equal(rateLimitWaitMs(refusal({ message: "too many frames; retry in 80 ms" }), 1_000), 80);
  assert.equal(rateLimitWaitMs(refusal({ message: "slow down" }), 1_000), 1_000);
  assert.equal(rateLimitWaitMs(refusal({ message: "slow down", retry_after_ms: -5 }), 1_000), 1_000);
});
