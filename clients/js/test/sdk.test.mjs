// The SDK against the real services (gateways, chat service, delivery worker as processes; Kafka, Cassandra
// and Redis of infra/local/servers.sh), started by tests/src/bin/harness.rs. No mock server: every frame the
// SDK reads was written by a gateway.

import assert from "node:assert/strict";
import { after, before, test } from "node:test";

import { ChatClient, ChatError } from "../dist/index.js";
import WebSocket from "ws";
import { Harness, duplicatesShown, fresh, makeClient, range, sleep, until } from "./harness.mjs";

/** @type {Harness} */
let h;
const clients = [];

function client(options) {
  const c = makeClient(h, options);
  clients.push(c);
  return c;
}

function figures(name, values) {
  console.log(`figures ${name}: ${Object.entries(values).map(([k, v]) => `${k}=${v}`).join(" ")}`);
}

before(async () => {
  h = await Harness.start();
}, { timeout: 300_000 });

after(async () => {
  for (const c of clients) c.close();
  if (h) await h.stop();
}, { timeout: 120_000 });

test("cross-gateway delivery, receipts and typing", { timeout: 120_000 }, async () => {
  const [g0, g1] = h.gateways;
  const alice = fresh("alice");
  const bob = fresh("bob");
  const conv = await h.createConversation(alice, [bob]);
  const a = client({ user: alice, urls: [g0, g1], conversations: { [conv]: 0 } });
  const b = client({ user: bob, urls: [g1, g0], conversations: { [conv]: 0 }, typingTimeoutMs: 1_000 });
  await Promise.all([a.connect(), b.connect()]);
  assert.equal(a.seen.states.findLast((s) => s.state === "live").url, g0);
  assert.equal(b.seen.states.findLast((s) => s.state === "live").url, g1);

  const n = 20;
  const sent = await Promise.all(range(1, n).map((i) => a.send(conv, `hello ${i}`)));
  assert.deepEqual(sent.map((s) => s.seq).sort((x, y) => x - y), range(1, n), "one dense number per send");
  assert.ok(sent.every((s) => !s.duplicate && s.attempts === 1));

  await until(() => b.shownIn(conv).length >= n, 30_000, () => `bob shown ${b.shownIn(conv).length} of ${n}`);
  const shown = b.shownIn(conv);
  assert.deepEqual(shown.map((m) => m.seq), range(1, n), "in order, each once");
  const bySeq = new Map(sent.map((s) => [s.seq, s]));
  for (const m of shown) {
    assert.equal(m.messageId, bySeq.get(m.seq).messageId);
    assert.equal(m.senderId, alice);
    assert.equal(m.via, "pushed", `seq ${m.seq} came ${m.via}`);
  }
  // The sender's own messages are shown at their numbers too.
  assert.deepEqual(a.shownIn(conv).map((m) => [m.seq, m.via]), range(1, n).map((s) => [s, "own"]));

  // Bob's device acknowledged (batched `delivered`) and reads: Alice gets both receipts.
  b.read(conv, n);
  await until(
    () => a.seen.receipts.some((r) => r.kind === "read" && r.userId === bob && r.upToSeq === n),
    20_000,
    () => `alice's receipts: ${JSON.stringify(a.seen.receipts)}`,
  );
  await until(
    () => a.seen.receipts.some((r) => r.kind === "delivered" && r.userId === bob && r.upToSeq === n),
    20_000,
    () => `alice's receipts: ${JSON.stringify(a.seen.receipts)}`,
  );
  const info = await a.conversation(conv);
  assert.equal(info.lastSeq, n);
  assert.deepEqual(info.memberIds.sort(), [alice, bob].sort());
  assert.equal(info.readPositions.find((p) => p.userId === bob)?.readSeq, n);

  // Typing crosses gateways, and ends by itself when no new indicator comes.
  assert.ok(a.typing(conv, true));
  await until(() => b.seen.typing.some((t) => t.userId === alice && t.typing), 20_000, "bob sees alice typing");
  await until(() => b.seen.typing.some((t) => t.userId === alice && !t.typing && t.expired), 5_000, "typing expires");

  // History paging: pages of 7 cover 1..n once, in order.
  const paged = [];
  for await (const page of a.historyPages(conv, { limit: 7 })) paged.push(...page.messages.map((m) => m.seq));
  assert.deepEqual(paged, range(1, n));
  figures("cross-gateway", { sent: n, shown: shown.length, "duplicates shown": duplicatesShown(shown) });
});

test("a gateway killed mid-stream: the SDK resumes, nothing lost, no duplicate shown", { timeout: 180_000 }, async () => {
  const [g0, g1] = h.gateways;
  const alice = fresh("alice");
  const bob = fresh("bob");
  const conv = await h.createConversation(alice, [bob]);
  // Both on gateway 1, which dies mid-stream. Alice moves to gateway 0 and sends her unanswered sends again
  // with their ids; Bob knows only gateway 1 and comes back when it restarts: what he missed is both in his
  // inbox and in history, so it reaches his SDK twice and must be shown once.
  const a = client({ user: alice, urls: [g1, g0], conversations: { [conv]: 0 }, sendTimeoutMs: 3_000 });
  const b = client({ user: bob, urls: [g1], conversations: { [conv]: 0 } });
  await Promise.all([a.connect(), b.connect()]);

  const n = 60;
  const sends = [];
  for (let i = 1; i <= n; i += 1) {
    sends.push(a.send(conv, `m${i}`, { id: `kill-${i}` }));
    if (i === 20) await until(() => b.shownIn(conv).length >= 10, 20_000, "bob shows the first messages");
    if (i === 25) await h.cmd("kill gateway 1");
    await sleep(20);
  }
  const sent = await Promise.all(sends);
  assert.deepEqual(sent.map((s) => s.seq).sort((x, y) => x - y), range(1, n), "every send stored once, numbers dense");
  assert.equal(a.seen.states.findLast((s) => s.state === "live").url, g0, "alice resumed on the other gateway");
  await h.cmd("start gateway 1");
  await until(() => b.shownIn(conv).length >= n, 60_000, () => `bob shown ${b.shownIn(conv).length} of ${n}`);
  await sleep(1_000); // time for a late duplicate to reach the app, if the SDK let one through
  const shown = b.shownIn(conv);
  assert.deepEqual(shown.map((m) => m.seq), range(1, n), "in order, each once");
  assert.equal(duplicatesShown(shown), 0);
  assert.ok(b.stats.sessions >= 2 && a.stats.sessions >= 2, "both reconnected");
  assert.ok(b.stats.duplicatesDropped > 0, "the inbox and the resume overlapped (else this test proves no dedup)");

  // The store holds one message per client id.
  const stored = await h.cmd(`history ${conv} ${alice}`);
  assert.equal(stored.messages.length, n);
  assert.equal(new Set(stored.messages.map((m) => m.client_msg_id)).size, n);
  figures("gateway-killed", {
    sent: n,
    shown: shown.length,
    "duplicates shown": duplicatesShown(shown),
    "duplicates dropped by the SDK": b.stats.duplicatesDropped,
    "sends retried": a.stats.resends,
    "bob arrivals pushed/inbox/history": `${b.stats.arrivals.pushed}/${b.stats.arrivals.inbox}/${b.stats.arrivals.history}`,
  });
});

test("a retried send keeps its id: one stored message", { timeout: 120_000 }, async () => {
  const alice = fresh("alice");
  const bob = fresh("bob");
  const conv = await h.createConversation(alice, [bob]);
  // The first answer to each of these sends is lost on the way to the SDK.
  const lose = new Set(["retry-timeout", "retry-reconnect"]);
  const lost = [];
  const a = client({
    user: alice,
    conversations: { [conv]: 0 },
    sendTimeoutMs: 1_500,
    transportHooks: {
      incoming: (f) => {
        if (f.type === "sent" && lose.delete(f.id)) {
          lost.push(f);
          return false;
        }
        return true;
      },
    },
  });
  const b = client({ user: bob, conversations: { [conv]: 0 } });
  await Promise.all([a.connect(), b.connect()]);

  // Unanswered past sendTimeoutMs: sent again on the same connection.
  const first = await a.send(conv, "once", { id: "retry-timeout" });
  assert.equal(first.attempts, 2);
  assert.equal(first.duplicate, true, "the second answer names the original");
  assert.equal(first.seq, lost[0].seq);
  assert.equal(first.messageId, lost[0].message_id);

  // Unanswered when the connection drops: sent again on the next one.
  const second = a.send(conv, "twice", { id: "retry-reconnect" });
  await until(() => lost.length === 2, 60_000, "the second answer is dropped");
  a.reconnect();
  const s2 = await second;
  assert.equal(s2.attempts, 2);
  assert.equal(s2.duplicate, true);
  assert.equal(s2.seq, lost[1].seq);

  const stored = await h.cmd(`history ${conv} ${alice}`);
  assert.deepEqual(
    stored.messages.map((m) => [m.seq, m.client_msg_id, m.body]),
    [
      [1, "retry-timeout", "once"],
      [2, "retry-reconnect", "twice"],
    ],
  );
  await until(() => b.shownIn(conv).length >= 2, 20_000, "bob shows both");
  await sleep(500);
  assert.deepEqual(b.shownIn(conv).map((m) => m.seq), [1, 2]);
  assert.deepEqual(a.shownIn(conv).map((m) => m.seq), [1, 2]);
  figures("retried-send", { sent: 2, "wire attempts": 4, stored: stored.messages.length, "duplicates shown": 0 });
});

test("an expired token is renewed through the provider (close 4001), and before expiry", { timeout: 120_000 }, async () => {
  const alice = fresh("alice");
  const bob = fresh("bob");
  const conv = await h.createConversation(alice, [bob]);
  let calls = 0;
  // The first token lives 3 s; the gateway closes with 4001 when it expires; later ones live an hour.
  const a = client({
    user: alice,
    conversations: { [conv]: 0 },
    refreshBeforeExpiryMs: 0,
    token: async () => {
      calls += 1;
      return h.token(alice, calls === 1 ? 3 : 3600);
    },
  });
  const b = client({ user: bob, conversations: { [conv]: 0 } });
  await Promise.all([a.connect(), b.connect()]);
  await until(() => a.stats.closeCodes.includes(4001), 15_000, () => `alice's close codes: ${a.stats.closeCodes}`);
  await until(() => a.state === "live", 15_000, () => `alice is ${a.state}`);
  assert.equal(calls, 2, "the provider was asked again after 4001");
  // What Bob sent around the expiry reaches Alice (resume), and Alice can send on the new token.
  const fromBob = await b.send(conv, "after the renewal");
  const fromAlice = await a.send(conv, "on the new token");
  await until(() => a.shownIn(conv).length >= 2 && b.shownIn(conv).length >= 2, 20_000, "both show both");
  assert.deepEqual(a.shownIn(conv).map((m) => m.seq), [fromBob.seq, fromAlice.seq].sort());

  // Renewed before expiry: a token of 6 s is renewed halfway, without a 4001.
  let early = 0;
  const c = client({
    user: fresh("carol"),
    token: async () => {
      early += 1;
      return h.token("carol-early", 6);
    },
  });
  await c.connect();
  await until(() => early >= 2 && c.state === "live" && c.stats.sessions >= 2, 15_000, () => `calls ${early}, ${c.state}`);
  assert.ok(!c.stats.closeCodes.includes(4001), `close codes: ${c.stats.closeCodes}`);
  figures("token", { "provider calls (4001 path)": calls, "provider calls (renewal)": early, "4001 closes": 1 });
});

test("a gap is held and filled from history", { timeout: 120_000 }, async () => {
  const alice = fresh("alice");
  const bob = fresh("bob");
  const conv = await h.createConversation(alice, [bob]);
  // The live push of number 2 is lost on the way to Bob's SDK.
  let dropped = 0;
  const b = client({
    user: bob,
    conversations: { [conv]: 0 },
    transportHooks: {
      incoming: (f) => {
        if (f.type === "message" && f.seq === 2 && !f.inbox && dropped === 0) {
          dropped += 1;
          return false;
        }
        return true;
      },
    },
  });
  const a = client({ user: alice, conversations: { [conv]: 0 } });
  await Promise.all([a.connect(), b.connect()]);
  const before = b.stats.historyRequests;
  for (const body of ["one", "two", "three"]) await a.send(conv, body);
  await until(() => b.shownIn(conv).length >= 3, 20_000, () => `bob shown ${b.shownIn(conv).map((m) => m.seq)}`);
  assert.equal(dropped, 1);
  assert.deepEqual(
    b.shownIn(conv).map((m) => [m.seq, m.body, m.via]),
    [
      [1, "one", "pushed"],
      [2, "two", "history"],
      [3, "three", "pushed"],
    ],
    "3 held until 2 was read from history",
  );
  assert.ok(b.stats.historyRequests > before, "a history request filled the gap");
  figures("gap", { sent: 3, shown: 3, "filled from history": 1, "duplicates shown": duplicatesShown(b.shownIn(conv)) });
});

test("history pages backwards from the newest message, and forwards again, each number once", { timeout: 120_000 }, async () => {
  const alice = fresh("alice");
  const bob = fresh("bob");
  const conv = await h.createConversation(alice, [bob]);
  const a = client({ user: alice, conversations: { [conv]: 0 } });
  await a.connect();
  const n = 30;
  for (const i of range(1, n)) await a.send(conv, `m${i}`);
  const b = client({ user: bob, conversations: {} });
  await b.connect();
  // History shows a message no later than it reaches a member: wait until the last one is there.
  await until(async () => (await b.history(conv, { afterSeq: n - 1 })).messages.length === 1, 20_000, () => "number 30 in history");
  const backwards = [];
  for await (const page of b.historyPagesBackwards(conv, { limit: 12 })) backwards.push(page.messages.map((m) => m.seq));
  assert.deepEqual(backwards, [range(19, 30), range(7, 18), range(1, 6)], "newest page first, each oldest first");
  const older = await b.history(conv, { beforeSeq: 11, afterSeq: 8, limit: 5 });
  assert.deepEqual(older.messages.map((m) => [m.seq, m.body]), [[9, "m9"], [10, "m10"]]);
  assert.equal(older.hasMore, false, "nothing between after_seq and the page");
  const forwards = [];
  for await (const page of b.historyPages(conv, { limit: 12 })) forwards.push(...page.messages.map((m) => m.seq));
  assert.deepEqual(forwards, range(1, n));
  const past = await b.history(conv, { afterSeq: n + 10 });
  assert.deepEqual([past.messages.length, past.lastSeq, past.hasMore], [0, n, false], "past the end: an empty page");
  await assert.rejects(b.history(conv, { limit: -1 }), (e) => e instanceof ChatError && e.code === "invalid_field");
  figures("history backwards", { messages: n, pages: backwards.length });
});

test("the conversation list: newest activity first, unread counts, pages, and read moves them", { timeout: 120_000 }, async () => {
  const alice = fresh("alice");
  const bob = fresh("bob");
  const carol = fresh("carol");
  const withBob = await h.createConversation(alice, [bob]);
  const group = await h.createConversation(alice, [bob, carol]);
  const withCarol = await h.createConversation(alice, [carol]);
  const a = client({ user: alice, conversations: {} });
  const b = client({ user: bob, conversations: { [withBob]: 0, [group]: 0 } });
  const c = client({ user: carol, conversations: { [withCarol]: 0 } });
  await Promise.all([a.connect(), b.connect(), c.connect()]);
  // Activity, oldest to newest: bob in the group, carol to alice, bob to alice twice.
  await b.send(group, "hi all");
  await c.send(withCarol, "hi alice");
  await b.send(withBob, "one");
  await b.send(withBob, "two");
  const rows = (page) => page.conversations.map((x) => [x.conversationId, x.lastSeq, x.readSeq, x.unread]);
  const expected = [[withBob, 2, 0, 2], [withCarol, 1, 0, 1], [group, 1, 0, 1]];
  await until(
    async () => JSON.stringify(rows(await a.conversations())) === JSON.stringify(expected),
    20_000,
    () => "alice's list in order with its unread counts",
  );
  const first = (await a.conversations()).conversations;
  assert.deepEqual(first.map((x) => x.kind), ["direct", "direct", "group"]);
  assert.deepEqual([...first[0].memberIds].sort(), [alice, bob].sort());
  assert.ok(first[0].lastActivityMs >= first[1].lastActivityMs && first[1].lastActivityMs >= first[2].lastActivityMs);
  const pages = [];
  for await (const page of a.conversationPages({ limit: 2 })) pages.push(rows(page));
  assert.deepEqual(pages, [expected.slice(0, 2), expected.slice(2)], "two pages, each conversation once");
  a.read(withBob, 2);
  await until(
    async () => rows(await a.conversations()).some(([id, last, read, unread]) => id === withBob && read === 2 && unread === 0),
    20_000,
    () => "the read position in alice's list",
  );
  await assert.rejects(a.conversations({ pageToken: "not-ours" }), (e) => e instanceof ChatError && e.code === "invalid_field");
  figures("conversation list", { conversations: 3, pages: pages.length });
});

test("delivered frames dropped 5 times in a row: the inbox keeps its entries, the app shows each once", { timeout: 180_000 }, async () => {
  const alice = fresh("alice");
  const bob = fresh("bob");
  const device = fresh("phone");
  const conv = await h.createConversation(alice, [bob]);
  // Bob's device is known (it has an inbox) once it has connected; then it goes away.
  const first = client({ user: bob, device, conversations: {} });
  await first.connect();
  first.close();
  const a = client({ user: alice, conversations: { [conv]: 0 } });
  await a.connect();
  const n = 10;
  for (let i = 1; i <= n; i += 1) await a.send(conv, `while away ${i}`);
  await until(async () => (await h.cmd(`inbox ${bob} ${device}`)).entries.length === n, 20_000, "the inbox holds them");

  // Bob's app knows nothing: the inbox brings the messages. Its first 5 `delivered` frames are lost.
  let drops = 0;
  const passed = [];
  const b = client({
    user: bob,
    device,
    transportHooks: {
      outgoing: (f) => {
        if (f.type !== "delivered") return true;
        if (drops < 5) {
          drops += 1;
          return false;
        }
        passed.push(f);
        return true;
      },
    },
  });
  await b.connect();
  const inboxCounts = [];
  for (let round = 1; round <= 5; round += 1) {
    await until(() => drops >= round, 20_000, () => `delivered frame ${round} (drops ${drops})`);
    // The acknowledgement never arrived: the inbox keeps every entry...
    const kept = await h.cmd(`inbox ${bob} ${device}`);
    assert.equal(kept.entries.length, n, `round ${round}: the inbox kept its entries`);
    // ... and hands them out again at the next connect.
    const inboxBefore = b.stats.arrivals.inbox;
    b.reconnect();
    await until(() => b.stats.arrivals.inbox - inboxBefore >= n, 20_000, () => `round ${round}: inbox again`);
    inboxCounts.push(b.seen.states.findLast((s) => s.state === "live")?.inboxCount);
  }
  // The sixth acknowledgement passes: the inbox empties.
  await until(() => passed.length >= 1, 20_000, "the sixth delivered frame");
  assert.deepEqual(passed[0], { v: 1, type: "delivered", conversation_id: conv, seq: n });
  await until(async () => (await h.cmd(`inbox ${bob} ${device}`)).entries.length === 0, 20_000, "the inbox empties");
  b.reconnect();
  await until(() => b.stats.sessions >= 7 && b.state === "live", 20_000, "a seventh session");
  assert.equal(b.seen.states.findLast((s) => s.state === "live").inboxCount, 0, "nothing handed out any more");

  const shown = b.shownIn(conv);
  assert.deepEqual(shown.map((m) => m.seq), range(1, n), "each message shown once, in order");
  assert.ok(shown.every((m) => m.via === "inbox"));
  assert.equal(drops, 5);
  figures("dropped-acks", {
    sent: n,
    shown: shown.length,
    "duplicates shown": duplicatesShown(shown),
    "delivered dropped": drops,
    "inbox hand-outs": b.stats.arrivals.inbox,
    "inbox counts at connect": inboxCounts.join(","),
    "duplicates dropped by the SDK": b.stats.duplicatesDropped,
  });
});

test("offline, the outgoing queue is bounded and says so", { timeout: 30_000 }, async () => {
  // No gateway listens on port 1: the client stays offline and queues.
  const c = new ChatClient({
    urls: ["ws://127.0.0.1:1"],
    deviceId: "offline",
    token: () => h.token("offline-user"),
    WebSocket,
    maxPendingSends: 3,
    backoff: { initialMs: 50, maxMs: 200 },
  });
  clients.push(c); // closed by the after hook should an assertion fail first
  const conv = "0192f0a4-3c1e-7a55-9d3e-1f6a2b3c4d5e";
  void c.connect().catch(() => {});
  const queued = [1, 2, 3].map((i) => c.send(conv, `q${i}`));
  assert.equal(c.pendingSends, 3);
  await assert.rejects(c.send(conv, "q4"), (e) => e instanceof ChatError && e.code === "queue_full");
  await until(() => c.state === "waiting", 5_000, "the client keeps trying");
  c.close();
  for (const q of queued) await assert.rejects(q, (e) => e instanceof ChatError && e.code === "closed");
});
