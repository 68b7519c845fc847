// A minimal Baileys gateway whose every connection goes through ipv4proxy.
//
//   npm ci                      # in this directory (.npmrc: --ignore-scripts)
//   IPV4PROXY_URL=http://127.0.0.1:3128 node baileys-gateway.mjs
//
// Environment: IPV4PROXY_URL (default http://127.0.0.1:3128), AUTH_DIR (default ./auth:
// the WhatsApp session), WA_WS_URL (default: Baileys' own, wss://web.whatsapp.com/ws/chat),
// BAILEYS (default "baileys", 6.17 here; "baileys7" is Baileys 7, installed here under that
// npm alias: the same code and wiring runs on both).
// It logs connection updates as JSON lines, reconnects when the connection closes (unless
// logged out), and downloads the media of incoming messages through the proxy.
import { fileURLToPath } from "node:url";
import { proxyWiring } from "./proxy-wiring.mjs";

// Baileys 6.17 is CommonJS (its exports under `default`), Baileys 7 an ES module.
export async function loadBaileys(name = process.env.BAILEYS ?? "baileys") {
  const module = await import(name);
  return module.makeWASocket ? module : module.default;
}

// Between reconnects, so a failing network is not hammered.
const RECONNECT_DELAY_MS = 2000;

export async function startGateway({
  proxyUrl = process.env.IPV4PROXY_URL,
  authDir = process.env.AUTH_DIR ?? "auth",
  wsUrl = process.env.WA_WS_URL,
  onUpdate = (update) => console.log(JSON.stringify({ event: "connection.update", ...update })),
  baileys,
} = {}) {
  const {
    makeWASocket,
    DEFAULT_CONNECTION_CONFIG,
    DisconnectReason,
    downloadMediaMessage,
    getContentType,
    useMultiFileAuthState,
  } = baileys ?? (await loadBaileys());
  const wiring = proxyWiring(proxyUrl);
  const { state, saveCreds } = await useMultiFileAuthState(authDir);
  const logger = DEFAULT_CONNECTION_CONFIG.logger.child({});
  logger.level = process.env.LOG_LEVEL ?? "warn";
  let stopped = false;
  let sock;

  const connect = () => {
    sock = makeWASocket({
      auth: state,
      logger,
      browser: ["ipv4proxy recipe", "Chrome", "1.0"],
      ...(wsUrl ? { waWebSocketUrl: new URL(wsUrl) } : {}),
      ...wiring.socketOptions,
    });
    sock.ev.on("creds.update", saveCreds);
    sock.ev.on("connection.update", (update) => {
      onUpdate({ connection: update.connection, qr: update.qr !== undefined });
      if (update.connection !== "close" || stopped) return;
      const status = update.lastDisconnect?.error?.output?.statusCode;
      if (status !== DisconnectReason.loggedOut) setTimeout(connect, RECONNECT_DELAY_MS);
    });
    sock.ev.on("messages.upsert", async ({ messages }) => {
      for (const message of messages) {
        const type = message.message && getContentType(message.message);
        if (!type || !/(image|video|audio|document|sticker)Message$/.test(type)) continue;
        const data = await downloadMediaMessage(message, "buffer", wiring.downloadOptions);
        console.log(JSON.stringify({ event: "media", type, bytes: data.length }));
      }
    });
  };
  connect();
  return {
    stop() {
      stopped = true;
      sock?.end(undefined);
    },
  };
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const gateway = await startGateway();
  for (const signal of ["SIGINT", "SIGTERM"]) {
    process.once(signal, () => {
      gateway.stop();
      process.exit(0);
    });
  }
}
