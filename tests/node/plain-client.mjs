// One real client with no proxy setting of any kind: DNS mode's clients (tests/lab).
//
// usage: node plain-client.mjs KIND URL DEADLINE_MS
//   KIND: ws       `new WebSocket(url)` (ws, as ws-plain.mjs), one text echo
//         fetch    Node's global fetch (undici inside Node 20), the whole body
//         https    `https.get(url)` with Node's default agent, the whole body
//         baileys  the real `baileys` package: makeWASocket with waWebSocketUrl = URL and
//                  no agent; it passes once the WebSocket is open and the server's first
//                  frame came back (the lab's echo of Baileys' own hello)
// Trust comes from NODE_EXTRA_CA_CERTS; names resolve with the system resolver, so
// whatever resolv.conf names decides what the client sees. Prints one JSON line and exits
// 0 on success; on failure prints `failure {JSON}` to stderr (an AggregateError, Happy
// Eyeballs giving up, carries one error per address) and exits 1; exits 2 when nothing
// happened within DEADLINE_MS (a hang, as on a broken IPv6 path). Each way it ends it
// first prints `elapsed_ms N` to stderr: from just before the client resolves and
// connects (after its modules are loaded: the deadline counts from there too) to that end.
import { createHash } from "node:crypto";
import https from "node:https";
import { createRequire } from "node:module";
import WebSocket from "ws";

const require = createRequire(import.meta.url);
const [kind, url, deadlineText] = process.argv.slice(2);
const DEADLINE_MS = Number(deadlineText);
let started = performance.now();

function elapsed() {
  console.error(`elapsed_ms ${Math.round(performance.now() - started)}`);
}

function one(e) {
  return { name: e?.name ?? null, code: e?.code ?? null, message: e?.message ?? String(e), address: e?.address ?? null };
}

// fetch wraps the socket's error in `cause`, Baileys in a Boom's `data`: unwrap to it.
function describe(error) {
  let inner = error;
  for (let i = 0; i < 3 && inner && !inner.errors && (inner.cause || inner.data); i += 1) {
    inner = inner.cause ?? inner.data;
  }
  return { ...one(inner), outer: one(error), errors: (inner?.errors ?? []).map(one) };
}

function fail(error) {
  elapsed();
  console.error(`failure ${JSON.stringify(describe(error))}`);
  process.exit(1);
}

function done(result) {
  elapsed();
  console.log(JSON.stringify(result));
  process.exit(0);
}

function digest(size, hash, status) {
  return { status, size, sha256: hash.digest("hex") };
}

const clients = {
  ws() {
    const ws = new WebSocket(url);
    ws.on("open", () => ws.send("hello dns mode"));
    ws.on("message", (data) => done({ text: data.toString("utf8") }));
    ws.on("error", fail);
  },
  async fetch() {
    try {
      const response = await fetch(url);
      const hash = createHash("sha256");
      let size = 0;
      for await (const chunk of response.body) {
        hash.update(chunk);
        size += chunk.length;
      }
      done(digest(size, hash, response.status));
    } catch (error) {
      fail(error);
    }
  },
  https() {
    https
      .get(url, (response) => {
        const hash = createHash("sha256");
        let size = 0;
        response.on("data", (chunk) => {
          hash.update(chunk);
          size += chunk.length;
        });
        response.on("end", () => done(digest(size, hash, response.statusCode)));
      })
      .on("error", fail);
  },
  baileys() {
    const baileys = require("baileys");
    const makeWASocket = baileys.default ?? baileys.makeWASocket;
    start(); // Baileys' modules are loaded: its connect starts now
    const silent = { level: "silent", child: () => silent, trace() {}, debug() {}, info() {}, warn() {}, error() {}, fatal() {} };
    const result = { opened: false, frames: 0 };
    const sock = makeWASocket({
      auth: { creds: baileys.initAuthCreds(), keys: { get: async () => ({}), set: async () => {} } },
      logger: silent,
      browser: baileys.Browsers.ubuntu("Chrome"),
      waWebSocketUrl: url,
      printQRInTerminal: false,
      markOnlineOnConnect: false,
    });
    sock.ws.on("open", () => {
      result.opened = true;
    });
    sock.ws.on("message", () => {
      result.frames += 1;
      done(result);
    });
    sock.ev.on("connection.update", ({ connection, lastDisconnect }) => {
      if (connection === "close" && result.frames === 0) fail(lastDisconnect?.error ?? new Error("closed"));
    });
  },
};

if (!(kind in clients) || !url || !(DEADLINE_MS > 0)) {
  console.error("usage: node plain-client.mjs ws|fetch|https|baileys URL DEADLINE_MS");
  process.exit(64);
}
// The deadline counts from the client's start (for Baileys, once its modules are loaded).
let deadline = null;
function start() {
  started = performance.now();
  clearTimeout(deadline);
  deadline = setTimeout(() => {
    elapsed();
    console.error(`timed out after ${DEADLINE_MS} ms`);
    process.exit(2);
  }, DEADLINE_MS);
}
process.on("unhandledRejection", (error) => fail(error));
start();
clients[kind]();
