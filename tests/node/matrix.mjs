// One real client, every failure case at once: what does the client do when the proxy fails?
//
// usage: node matrix.mjs CLIENT WINDOW_MS CASES_JSON
//   CLIENT: baileys-https-proxy-agent | baileys-socks-proxy-agent | ws-https-proxy-agent |
//           ws-socks-proxy-agent | ws-global-agent | undici-proxy-agent |
//           axios-https-proxy-agent | axios-socks-proxy-agent (Baileys 6.17's media path:
//           axios with `httpsAgent`, the `fetchAgent` of uploads and the download options) |
//           baileys7-https-proxy-agent | baileys7-socks-proxy-agent (Baileys 7's WebSocket) |
//           baileys7-fetch-proxy-agent | baileys7-fetch-env-proxy-agent (Baileys 7's media
//           path: its own `getHttpStream`, Node's built-in fetch, with an undici `ProxyAgent`
//           passed as `dispatcher`, or with no dispatcher under a global `EnvHttpProxyAgent`)
//   CASES_JSON: [{"id": "...", "proxy": "http://... or socks5h://...", "url": "wss://..."}]
//   (ws-global-agent ignores "proxy": run it with -r global-agent/bootstrap and
//   GLOBAL_AGENT_HTTP_PROXY set, so the proxy comes from the environment alone;
//   baileys7-fetch-env-proxy-agent ignores it too: run it with HTTPS_PROXY set.)
// "baileys" is Baileys 6.17, "baileys7" Baileys 7 (package.json: an npm alias).
// Trust comes from NODE_EXTRA_CA_CERTS. Cases run concurrently; each is bounded by
// WINDOW_MS and prints one JSON line {"id", "outcome", "ms", "detail"}, outcome one of:
//   open       the WebSocket opened (ws clients)
//   ok         the HTTP request got a 200 response (undici, axios, Baileys 7's fetch)
//   error      the client reported an error within the window
//   reconnect  Baileys closed with an error (connection.update "close"), the recipe's
//              handler reconnected, and the second attempt closed too: the gateway's
//              reconnect loop is alive
//   stall      nothing within the window: no error, no close, no reconnect
// Then the process exits 0, whatever is still pending (a stalled socket, a retry loop).
import { createRequire } from "node:module";
import axios from "axios";
import { HttpsProxyAgent } from "https-proxy-agent";
import { SocksProxyAgent } from "socks-proxy-agent";
import { EnvHttpProxyAgent, ProxyAgent, fetch, setGlobalDispatcher } from "undici";
import WebSocket from "ws";

const require = createRequire(import.meta.url);
const [client, windowText, casesJson] = process.argv.slice(2);
const WINDOW_MS = Number(windowText);
const cases = JSON.parse(casesJson ?? "null");
// Baileys' reconnect handler (the recipe of docs/clients.md) is run this many times per case.
const ATTEMPTS = 2;

function describe(error) {
  if (!error) return "";
  const inner = error.cause ? ` (cause: ${describe(error.cause)})` : "";
  return `${error.code ?? error.name ?? ""} ${error.message ?? String(error)}${inner}`.trim();
}

// Resolves with the first outcome reported, or "stall" once the window has passed.
function bounded(run) {
  return new Promise((resolve) => {
    const started = Date.now();
    let done = false;
    const report = (outcome, detail = "") => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      resolve({ outcome, ms: Date.now() - started, detail: String(detail).slice(0, 300) });
    };
    const timer = setTimeout(() => report("stall"), WINDOW_MS);
    try {
      run(report);
    } catch (error) {
      report("error", `thrown: ${describe(error)}`);
    }
  });
}

const agents = {
  "https-proxy-agent": (proxy) => new HttpsProxyAgent(proxy),
  "socks-proxy-agent": (proxy) => new SocksProxyAgent(proxy),
};

function wsCase(agent) {
  return ({ url }) =>
    bounded((report) => {
      const ws = agent === undefined ? new WebSocket(url) : new WebSocket(url, { agent });
      ws.on("open", () => {
        report("open");
        ws.terminate();
      });
      ws.on("error", (error) => report("error", describe(error)));
      ws.on("close", (code) => report("error", `closed ${code} before opening`));
    });
}

function undiciCase({ proxy, url }) {
  return bounded((report) => {
    fetch(url, { dispatcher: new ProxyAgent(proxy) }).then(
      (response) => report(response.status === 200 ? "ok" : "error", response.status),
      (error) => report("error", describe(error)),
    );
  });
}

function axiosCase(makeAgent) {
  return ({ proxy, url }) =>
    bounded((report) => {
      // proxy: false, or axios would also apply HTTPS_PROXY from the environment on top.
      axios.get(url, { httpsAgent: makeAgent(proxy), proxy: false }).then(
        (response) => report("ok", response.status),
        (error) => report("error", describe(error)),
      );
    });
}

// A logger with pino's shape that prints nothing (Baileys logs through it).
const silent = {
  level: "silent",
  child() {
    return silent;
  },
  trace() {},
  debug() {},
  info() {},
  warn() {},
  error() {},
  fatal() {},
};

// Baileys 7's media download: its own getHttpStream (what downloadContentFromMessage and
// downloadMediaMessage call), Node's built-in fetch with `dispatcher` from the options,
// the body read to its end.
function baileys7FetchCase(makeOptions, setUp = () => {}) {
  return async () => {
    const { getHttpStream } = await import("baileys7");
    setUp();
    return ({ proxy, url }) =>
      bounded((report) => {
        getHttpStream(new URL(url), makeOptions(proxy))
          .then(async (stream) => {
            let size = 0;
            for await (const chunk of stream) size += chunk.length;
            report("ok", `${size} bytes`);
          })
          .catch((error) => report("error", describe(error)));
      });
  };
}

async function baileysCase(makeAgent, name = "baileys") {
  // Baileys 6.17 is CommonJS, Baileys 7 an ES module.
  const baileys = name === "baileys" ? require(name) : await import(name);
  const makeWASocket = baileys.default ?? baileys.makeWASocket;
  const { Browsers, DisconnectReason, initAuthCreds } = baileys;
  // One set of credentials for every socket of the process: making them costs tens of ms
  // of CPU (key pairs), which for every attempt of every case would eat into the windows
  // on a busy host; the stand-in never gets as far as checking them.
  const creds = initAuthCreds();
  return ({ proxy, url }) =>
    bounded((report) => {
      const closes = [];
      const connect = () => {
        const sock = makeWASocket({
          auth: { creds, keys: { get: async () => ({}), set: async () => {} } },
          logger: silent,
          browser: Browsers.ubuntu("Chrome"),
          waWebSocketUrl: url,
          agent: makeAgent(proxy),
          printQRInTerminal: false,
          markOnlineOnConnect: false,
        });
        // The reconnect handler a gateway runs, as in docs/clients.md.
        sock.ev.on("connection.update", ({ connection, lastDisconnect }) => {
          if (connection !== "close") return;
          const error = lastDisconnect?.error;
          closes.push(describe(error));
          if (error?.output?.statusCode === DisconnectReason.loggedOut) {
            report("error", `logged out: ${closes.join("; ")}`);
          } else if (closes.length >= ATTEMPTS) {
            report("reconnect", closes.join("; "));
          } else {
            connect();
          }
        });
      };
      connect();
    });
}

const clients = {
  "baileys-https-proxy-agent": () => baileysCase(agents["https-proxy-agent"]),
  "baileys-socks-proxy-agent": () => baileysCase(agents["socks-proxy-agent"]),
  "ws-https-proxy-agent": () => (c) => wsCase(agents["https-proxy-agent"](c.proxy))(c),
  "ws-socks-proxy-agent": () => (c) => wsCase(agents["socks-proxy-agent"](c.proxy))(c),
  "ws-global-agent": () => wsCase(undefined),
  "undici-proxy-agent": () => undiciCase,
  "axios-https-proxy-agent": () => axiosCase(agents["https-proxy-agent"]),
  "axios-socks-proxy-agent": () => axiosCase(agents["socks-proxy-agent"]),
  "baileys7-https-proxy-agent": () => baileysCase(agents["https-proxy-agent"], "baileys7"),
  "baileys7-socks-proxy-agent": () => baileysCase(agents["socks-proxy-agent"], "baileys7"),
  "baileys7-fetch-proxy-agent": baileys7FetchCase((proxy) => ({ dispatcher: new ProxyAgent(proxy) })),
  // Every fetch() of the process goes through the proxy HTTPS_PROXY names.
  "baileys7-fetch-env-proxy-agent": baileys7FetchCase(
    () => ({}),
    () => setGlobalDispatcher(new EnvHttpProxyAgent()),
  ),
};

if (!(client in clients) || !(WINDOW_MS > 0) || !Array.isArray(cases)) {
  console.error("usage: node matrix.mjs CLIENT WINDOW_MS CASES_JSON");
  process.exit(64);
}
// A client library's stray rejection must not end the run before every case has reported.
process.on("unhandledRejection", (error) => console.error(`unhandled: ${describe(error)}`));
const runCase = await clients[client]();
await Promise.all(
  cases.map(async (c) => {
    const result = await runCase(c);
    console.log(JSON.stringify({ id: c.id, ...result }));
  }),
);
process.exit(0);
