// A Node program with no proxy code at all, proxied by global-agent from the outside:
//
//   GLOBAL_AGENT_HTTP_PROXY=http://127.0.0.1:3128 \
//     node -r global-agent/bootstrap global-agent-app.mjs https://example.com/ wss://example.com/ws
//
// global-agent replaces the global http and https agents, so every `https.get` and every
// `ws` WebSocket of the process goes through the proxy. It does not reach `fetch()` (undici):
// for that use NODE_USE_ENV_PROXY=1 on Node >= 22.21 / 24.5, or an undici dispatcher
// (proxy-wiring.mjs). Prints one JSON line: the HTTPS status and the WebSocket echo.
import https from "node:https";
import WebSocket from "ws";

const [httpsUrl, wsUrl] = process.argv.slice(2);
if (!httpsUrl || !wsUrl) {
  console.error("usage: node -r global-agent/bootstrap global-agent-app.mjs HTTPS_URL WSS_URL");
  process.exit(64);
}
const deadline = setTimeout(() => {
  console.error("timed out");
  process.exit(2);
}, 20000);

const status = await new Promise((resolve, reject) => {
  https.get(httpsUrl, (response) => {
    response.resume();
    response.on("end", () => resolve(response.statusCode));
  }).on("error", reject);
});
const echo = await new Promise((resolve, reject) => {
  const ws = new WebSocket(wsUrl);
  ws.on("open", () => ws.send("hello through global-agent"));
  ws.on("message", (data) => {
    ws.close(1000);
    resolve(data.toString("utf8"));
  });
  ws.on("error", reject);
});
clearTimeout(deadline);
console.log(JSON.stringify({ status, echo }));
