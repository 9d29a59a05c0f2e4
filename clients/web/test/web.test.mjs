// The web chat in a real browser: Debian's Chromium, driven by playwright-core, against the real services
// (the harness of clients/js starts them, with the gateways serving clients/web at /app/). Two browser
// contexts, two users, two gateways. Screenshots go to target/web-screenshots/.

import assert from "node:assert/strict";
import { mkdirSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { after, before, test } from "node:test";
import { fileURLToPath } from "node:url";

import { chromium } from "playwright-core";

import { Harness, fresh } from "../../js/test/harness.mjs";

const here = dirname(fileURLToPath(import.meta.url));
const repo = resolve(here, "..", "..", "..");
const shots = join(process.env.CARGO_TARGET_DIR || join(repo, "target"), "web-screenshots");
const CHROMIUM = process.env.CHROMIUM || "/usr/bin/chromium";

/** @type {Harness} */
let h;
let browser;

before(async () => {
  // The gateways (processes of the harness) inherit this: they serve the web chat at /app/.
  process.env.GATEWAY_WEB_DIR = resolve(here, "..");
  h = await Harness.start();
  // Flags for a machine without a network beyond loopback: no background requests to Google's hosts.
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
      "--disable-component-update", "--disable-sync"],
  });
  mkdirSync(shots, { recursive: true });
}, { timeout: 300_000 });

after(async () => {
  if (browser) await browser.close();
  if (h) await h.stop();
}, { timeout: 120_000 });

/** Opens the web chat for `user` on gateway `gateway` (a ws:// URL) through the sign-in link `make up` prints. */
async function signedIn(user, gateway) {
  const context = await browser.newContext({ viewport: { width: 1000, height: 700 } });
  const page = await context.newPage();
  const errors = [];
  page.on("pageerror", (e) => errors.push(String(e)));
  page.on("console", (m) => m.type() === "error" && errors.push(m.text()));
  const origin = gateway.replace(/^ws/, "http");
  await page.goto(`${origin}/app/#token=${h.token(user)}&device=web`);
  await page.locator('#state[data-state="live"]').waitFor({ timeout: 30_000 });
  assert.equal(new URL(page.url()).hash, "", "the token left the address bar");
  return { page, errors };
}

/** The numbers of the messages the page shows, in the order shown. */
async function shownSeqs(page) {
  return page.$$eval("#messages li[data-seq]", (lis) => lis.map((li) => Number(li.dataset.seq)));
}

test("two users chat in two browsers through two gateways", { timeout: 240_000 }, async () => {
  const [g0, g1] = h.gateways;
  const alice = fresh("alice");
  const bob = fresh("bob");
  const conv = await h.createConversation(alice, [bob]);
  const a = await signedIn(alice, g0);
  const b = await signedIn(bob, g1);

  // The conversation list names the other member.
  const aliceItem = a.page.locator(`#conversations li[data-conversation="${conv}"]`);
  await aliceItem.waitFor();
  assert.match(await aliceItem.textContent(), new RegExp(bob));
  await aliceItem.click();

  // 60 messages from alice (through her page's SDK), then bob opens the conversation at the newest ones.
  const bulk = 60;
  await a.page.evaluate(
    async ([c, n]) => {
      for (let i = 1; i <= n; i++) await window.chat.client.send(c, `bulk ${i}`);
    },
    [conv, bulk],
  );
  const bobItem = b.page.locator(`#conversations li[data-conversation="${conv}"]`);
  await bobItem.locator(".unread", { hasText: String(bulk) }).waitFor({ timeout: 20_000 });
  await bobItem.click();
  await b.page.waitForFunction(() => document.querySelectorAll("#messages li[data-seq]").length >= 50);
  assert.deepEqual(await shownSeqs(b.page), Array.from({ length: 50 }, (_, i) => i + 11), "the newest page first");
  // History on scroll: the older ones come above.
  await b.page.$eval("#messages", (el) => { el.scrollTop = 0; el.dispatchEvent(new Event("scroll")); });
  await b.page.waitForFunction((n) => document.querySelectorAll("#messages li[data-seq]").length >= n, bulk);
  assert.deepEqual(await shownSeqs(b.page), Array.from({ length: bulk }, (_, i) => i + 1), "all, in order, each once");

  // Alice types: bob sees it; she sends: pending, then sent, then read once bob's open page shows it.
  await a.page.locator("#body").pressSequentially("hello bob");
  await b.page.locator("#typing", { hasText: `${alice} is typing` }).waitFor({ timeout: 10_000 });
  await a.page.locator("#body").press("Enter");
  const hello = b.page.locator("#messages li.theirs", { hasText: "hello bob" });
  await hello.waitFor({ timeout: 20_000 });
  assert.equal(await hello.getAttribute("data-seq"), String(bulk + 1));
  const aliceHello = a.page.locator(`#messages li.mine[data-seq="${bulk + 1}"] .ticks`);
  await a.page.locator(`#messages li.mine[data-seq="${bulk + 1}"] .ticks[data-status="read"]`).waitFor({ timeout: 20_000 });
  assert.equal(await aliceHello.textContent(), "✓✓");
  await b.page.locator("#typing", { hasText: /^$/ }).waitFor({ timeout: 10_000 });

  // Bob answers on the other gateway.
  await b.page.locator("#body").fill("hi alice");
  await b.page.locator("#composer button").click();
  await a.page.locator("#messages li.theirs", { hasText: "hi alice" }).waitFor({ timeout: 20_000 });
  await b.page.locator(`#messages li.mine[data-seq="${bulk + 2}"] .ticks`).waitFor({ timeout: 20_000 });

  await a.page.screenshot({ path: join(shots, "alice.png") });
  await b.page.screenshot({ path: join(shots, "bob.png") });

  // Alice's gateway goes away: her page says so, and comes back live when it returns.
  await h.cmd("stop gateway 0");
  await a.page.locator('#state[data-state="waiting"]').waitFor({ timeout: 20_000 });
  await a.page.screenshot({ path: join(shots, "alice-reconnecting.png") });
  await h.cmd("start gateway 0");
  await a.page.locator('#state[data-state="live"]').waitFor({ timeout: 60_000 });
  await b.page.locator("#body").fill("after the restart");
  await b.page.locator("#body").press("Enter");
  await a.page.locator("#messages li.theirs", { hasText: "after the restart" }).waitFor({ timeout: 30_000 });

  const aSeqs = await shownSeqs(a.page);
  const bSeqs = await shownSeqs(b.page);
  for (const [who, seqs] of [["alice", aSeqs], ["bob", bSeqs]]) {
    assert.equal(new Set(seqs).size, seqs.length, `${who} was shown a number twice: ${seqs}`);
    assert.deepEqual(seqs, [...seqs].sort((x, y) => x - y), `${who}'s messages out of order`);
  }
  assert.deepEqual(bSeqs, Array.from({ length: bulk + 3 }, (_, i) => i + 1));
  // Signing in by hand: without a link the page asks for a token and a device.
  const context = await browser.newContext();
  const page = await context.newPage();
  await page.goto(`${g1.replace(/^ws/, "http")}/app/`);
  await page.locator("#signin").waitFor();
  await page.locator("#signin-token").fill(h.token(bob));
  await page.locator("#signin-device").fill("tablet");
  await page.locator('#signin button[type="submit"]').click();
  await page.locator('#state[data-state="live"]').waitFor({ timeout: 30_000 });
  await page.locator(`#conversations li[data-conversation="${conv}"]`).waitFor();
  assert.match(await page.locator("#me").textContent(), new RegExp(`${bob} on tablet`));
  await context.close();

  assert.deepEqual(a.errors, [], "alice's page logged errors");
  assert.deepEqual(b.errors, [], "bob's page logged errors");
  console.log(`figures web: sent=${bulk + 3} bob shown=${bSeqs.length} duplicates shown=0 screenshots=${shots}`);
});
