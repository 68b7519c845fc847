// Exercise deploy/examples/node's Baileys recipe against a local proxy and TLS server.
//
// usage: node baileys-recipe.mjs PROXY_URL ORIGIN AUTH_DIR [BAILEYS]
//   ORIGIN: https://NAME:PORT of the test server (it serves /ws/chat, /media/download,
//   /media/encrypted and POST /mms/image/...); NAME resolves only through the proxy's DNS
//   server, so nothing here can reach it without the proxy. Trust comes from
//   NODE_EXTRA_CA_CERTS. BAILEYS: "baileys" (6.17, the default) or "baileys7" (Baileys 7).
// It uses the recipe's own modules, and the recipe's own installed packages:
// 1. fetch() through the global undici dispatcher that proxyWiring() installs;
// 2. a media download with Baileys' getHttpStream (axios in 6.17, fetch in 7) and the
//    recipe's downloadOptions;
// 3. an encrypted media download with Baileys' downloadContentFromMessage (what
//    downloadMediaMessage calls), decrypted with MEDIA_KEY;
// 4. a media upload with Baileys' uploader and the recipe's fetchAgent;
// 5. startGateway(): makeWASocket with the recipe's agent opens the WebSocket; the server
//    closes it after Baileys' first binary frame, and the close ends the run.
// Prints one JSON line; exits 1 on any error. A hard timer bounds the whole run.
import { writeFile } from "node:fs/promises";
import { join } from "node:path";
import { Readable } from "node:stream";

const DEADLINE_MS = 25000;
const recipe = new URL("../../../deploy/examples/node/", import.meta.url);
const { proxyWiring } = await import(new URL("proxy-wiring.mjs", recipe));
const { loadBaileys, startGateway } = await import(new URL("baileys-gateway.mjs", recipe));
// Must match tests/deploy/test_examples.py MEDIA_KEY: the key /media/encrypted is sealed with.
const MEDIA_KEY = Buffer.alloc(32, 0x2a);

const [proxyUrl, origin, authDir, name = "baileys"] = process.argv.slice(2);
if (!proxyUrl || !origin || !authDir) {
  console.error("usage: node baileys-recipe.mjs PROXY_URL ORIGIN AUTH_DIR [BAILEYS]");
  process.exit(64);
}
const baileys = await loadBaileys(name);
const timer = setTimeout(() => {
  console.error(`timed out after ${DEADLINE_MS} ms`);
  process.exit(2);
}, DEADLINE_MS);
process.on("unhandledRejection", (error) => {
  console.error(`error: ${error?.stack ?? error}`);
  process.exit(1);
});

const wiring = proxyWiring(proxyUrl);
const result = {};

const fetched = await fetch(`${origin}/media/download`);
result.fetchBytes = (await fetched.arrayBuffer()).byteLength;

const stream = await baileys.getHttpStream(new URL(`${origin}/media/download`), wiring.downloadOptions.options);
let downloaded = 0;
for await (const chunk of stream) downloaded += chunk.length;
result.downloadBytes = downloaded;

const decrypted = await baileys.downloadContentFromMessage(
  { mediaKey: MEDIA_KEY, url: `${origin}/media/encrypted` },
  "image",
  wiring.downloadOptions,
);
const plain = [];
for await (const chunk of decrypted) plain.push(chunk);
result.decryptedText = Buffer.concat(plain).toString("utf8");

const logger = baileys.DEFAULT_CONNECTION_CONFIG.logger.child({});
logger.level = "silent";
const upload = baileys.getWAUploadToServer(
  {
    customUploadHosts: [{ hostname: new URL(origin).host, maxContentLengthBytes: 1 << 20 }],
    logger,
    ...wiring.socketOptions,
  },
  async () => ({ hosts: [], auth: "recipe-test", ttl: 60, fetchDate: new Date() }),
);
// Baileys 6.17 uploads a stream, Baileys 7 a file.
const media = Buffer.alloc(4096, 7);
let uploaded = Readable.from([media]);
if (name !== "baileys") {
  uploaded = join(authDir, "..", "upload.bin");
  await writeFile(uploaded, media);
}
result.upload = await upload(uploaded, {
  mediaType: "image",
  fileEncSha256B64: "cmVjaXBlLXRlc3Q=",
  timeoutMs: 10000,
});

result.updates = [];
let closed;
const done = new Promise((resolve) => {
  closed = resolve;
});
const gateway = await startGateway({
  baileys,
  proxyUrl,
  authDir,
  wsUrl: `${origin.replace(/^https:/, "wss:")}/ws/chat`,
  onUpdate: (update) => {
    result.updates.push(update.connection ?? null);
    if (update.connection === "close") closed();
  },
});
await done;
gateway.stop();
clearTimeout(timer);
console.log(JSON.stringify(result));
process.exit(0);
