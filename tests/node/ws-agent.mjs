// Open a WebSocket through a proxy agent, echo one text and one binary message, print JSON.
//
// usage: node ws-agent.mjs https-proxy-agent|socks-proxy-agent PROXY_URL WS_URL TEXT
// Trust comes from NODE_EXTRA_CA_CERTS. Prints {"text": ..., "binarySize": N,
// "binarySha256": HEX} on success; on failure prints the error to stderr and exits 1.
// A hard timer bounds the whole run.
import { HttpsProxyAgent } from "https-proxy-agent";
import { SocksProxyAgent } from "socks-proxy-agent";
import { echoOnce } from "./ws-common.mjs";

const [kind, proxyUrl, wsUrl, text] = process.argv.slice(2);
const agents = {
  "https-proxy-agent": () => new HttpsProxyAgent(proxyUrl),
  "socks-proxy-agent": () => new SocksProxyAgent(proxyUrl),
};
if (!(kind in agents) || !proxyUrl || !wsUrl || text === undefined) {
  console.error("usage: node ws-agent.mjs https-proxy-agent|socks-proxy-agent PROXY_URL WS_URL TEXT");
  process.exit(64);
}
await echoOnce(wsUrl, text, { agent: agents[kind]() });
