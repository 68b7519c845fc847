// Route every connection a Baileys gateway opens through ipv4proxy.
//
// Three paths leave a Baileys process, and each needs its own hook:
// 1. the WhatsApp WebSocket (`ws`): the socket option `agent`;
// 2. media uploads, which Baileys 6.x posts with axios: the socket option `fetchAgent`;
//    media downloads with axios take the same agent through `downloadOptions`;
// 3. `fetch()` (Node's built-in undici: media downloads in newer Baileys, and your own
//    code): a global undici `ProxyAgent` dispatcher.
// axios would also apply HTTPS_PROXY from the environment on top of the agent, proxying
// twice: `proxy: false` turns that off.
//
// Write 127.0.0.1, never localhost, in the proxy URL: Node may resolve localhost to ::1.
import { HttpsProxyAgent } from "https-proxy-agent";
import { ProxyAgent, setGlobalDispatcher } from "undici";

export const DEFAULT_PROXY_URL = "http://127.0.0.1:3128";

export function proxyWiring(proxyUrl = process.env.IPV4PROXY_URL ?? DEFAULT_PROXY_URL) {
  setGlobalDispatcher(new ProxyAgent(proxyUrl));
  const agent = new HttpsProxyAgent(proxyUrl);
  return {
    // Spread into makeWASocket({...}).
    socketOptions: { agent, fetchAgent: agent, options: { proxy: false } },
    // Pass to downloadMediaMessage(message, type, downloadOptions).
    downloadOptions: { options: { httpsAgent: agent, proxy: false } },
  };
}
