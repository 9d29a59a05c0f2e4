// The real services for the SDK's tests: spawns `harness` (tests/src/bin/harness.rs), which starts gateways,
// a chat service and a delivery worker as processes against the servers of infra/local/servers.sh, and talks
// to it by line commands. Also: tokens signed as the deployment does, and clients that record what the app
// is shown.

import { spawn } from "node:child_process";
import { createHmac } from "node:crypto";
import { existsSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";
import WebSocket from "ws";

import { ChatClient } from "../dist/index.js";

const here = dirname(fileURLToPath(import.meta.url));
const repo = resolve(here, "..", "..", "..");

/** The harness binary: $SDK_HARNESS, else target/debug/harness of $CARGO_TARGET_DIR or the repository. */
function harnessPath() {
  if (process.env.SDK_HARNESS) return process.env.SDK_HARNESS;
  const target = process.env.CARGO_TARGET_DIR || join(repo, "target");
  return join(target, "debug", "harness");
}

export class Harness {
  /** Starts the cluster; resolves when the harness printed its ready line. */
  static async start() {
    const bin = harnessPath();
    if (!existsSync(bin)) {
      throw new Error(`${bin} is missing: build it with \`cargo build --bins\` (\`make sdk-test\` does)`);
    }
    const child = spawn(bin, [], { cwd: repo, stdio: ["pipe", "pipe", "inherit"] });
    const h = new Harness(child);
    h.info = await h.next(240_000, "the cluster to start");
    if (!h.info.ready) throw new Error(`harness: ${JSON.stringify(h.info)}`);
    return h;
  }

  /** @param {import("node:child_process").ChildProcessWithoutNullStreams} child */
  constructor(child) {
    this.child = child;
    /** @type {{ ready: boolean, cluster: string, gateways: string[], jwt_secret: string }} */
    this.info = { ready: false, cluster: "", gateways: [], jwt_secret: "" };
    /** @type {Promise<unknown> | undefined} */
    this.queue = undefined;
    this.lines = [];
    this.waiters = [];
    this.exited = new Promise((res) => child.on("exit", (code, signal) => res({ code, signal })));
    this.exited.then(({ code, signal }) => {
      for (const w of this.waiters.splice(0)) w.reject(new Error(`harness exited (${code ?? signal})`));
    });
    createInterface({ input: child.stdout }).on("line", (line) => {
      const value = JSON.parse(line);
      const w = this.waiters.shift();
      if (w) w.resolve(value);
      else this.lines.push(value);
    });
  }

  next(timeoutMs, what) {
    const ready = this.lines.shift();
    if (ready) return Promise.resolve(ready);
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`harness: no answer within ${timeoutMs} ms for ${what}`)), timeoutMs);
      this.waiters.push({
        resolve: (v) => {
          clearTimeout(timer);
          resolve(v);
        },
        reject: (e) => {
          clearTimeout(timer);
          reject(e);
        },
      });
    });
  }

  /** Runs one command; answers its JSON, or throws the harness's error. Commands run one at a time. */
  async cmd(line) {
    const previous = this.queue ?? Promise.resolve();
    const run = previous.then(async () => {
      this.child.stdin.write(line + "\n");
      const answer = await this.next(120_000, line);
      if (!answer.ok) throw new Error(`harness ${line}: ${answer.error}`);
      return answer;
    });
    this.queue = run.catch(() => {});
    return run;
  }

  get gateways() {
    return this.info.gateways;
  }

  /** A token for `user`, signed with the cluster's secret (HS256), expiring in `lifetimeSecs`. */
  token(user, lifetimeSecs = 3600) {
    return signToken({ sub: user, exp: Math.floor(Date.now() / 1000) + lifetimeSecs }, this.info.jwt_secret);
  }

  async createConversation(creator, members) {
    const r = await this.cmd(`create ${creator} ${members.join(",")}`);
    return r.conversation_id;
  }

  /** Ends the harness: it stops the cluster gracefully at the end of its input. */
  async stop() {
    this.child.stdin.end();
    const timer = setTimeout(() => this.child.kill("SIGTERM"), 90_000);
    const { code, signal } = await this.exited;
    clearTimeout(timer);
    if (code !== 0) throw new Error(`harness ended with ${code ?? signal}`);
  }
}

function base64url(data) {
  return Buffer.from(data).toString("base64url");
}

export function signToken(claims, secret) {
  const head = base64url(JSON.stringify({ alg: "HS256", typ: "JWT" }));
  const body = base64url(JSON.stringify(claims));
  const sig = createHmac("sha256", secret).update(`${head}.${body}`).digest("base64url");
  return `${head}.${body}.${sig}`;
}

let unique = 0;
/** A fresh id for users and devices, so that tests never see each other's data. */
export function fresh(prefix) {
  unique += 1;
  return `${prefix}-${process.pid}-${Date.now().toString(36)}-${unique}`;
}

/**
 * A ChatClient on Node's `ws`, with what the app was shown recorded: `shown` per conversation (in order),
 * every `receipt`, `typing` and `state` event.
 */
export function makeClient(harness, { user, device, urls, token, ...options }) {
  const client = new ChatClient({
    urls: urls ?? harness.gateways,
    deviceId: device ?? fresh("dev"),
    token: token ?? (() => harness.token(user)),
    WebSocket,
    backoff: { initialMs: 100, maxMs: 2_000 },
    ...options,
  });
  const seen = { shown: new Map(), receipts: [], typing: [], states: [], errors: [] };
  client.on("message", (m) => {
    const list = seen.shown.get(m.conversationId) ?? [];
    list.push(m);
    seen.shown.set(m.conversationId, list);
  });
  client.on("receipt", (r) => seen.receipts.push(r));
  client.on("typing", (t) => seen.typing.push(t));
  client.on("state", (s) => seen.states.push(s));
  client.on("error", (e) => seen.errors.push(e));
  /** @param {string} conversation */
  const shownIn = (conversation) => seen.shown.get(conversation) ?? [];
  return Object.assign(client, { seen, shownIn });
}

/** Polls `check` every 25 ms until it answers truthy; fails after `timeoutMs` with `what()`. */
export async function until(check, timeoutMs, what) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await check();
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`not within ${timeoutMs} ms: ${typeof what === "function" ? what() : what}`);
    await new Promise((r) => setTimeout(r, 25));
  }
}

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Numbers shown more than once in a list of shown messages. */
export function duplicatesShown(list) {
  const seen = new Set();
  let dups = 0;
  for (const m of list) {
    if (seen.has(m.seq)) dups += 1;
    seen.add(m.seq);
  }
  return dups;
}

export function range(from, to) {
  const out = [];
  for (let i = from; i <= to; i += 1) out.push(i);
  return out;
}
