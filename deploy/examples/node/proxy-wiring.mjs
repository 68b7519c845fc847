// Route every connection a Baileys gateway opens through ipv4proxy.
//
// Three paths leave a Baileys process, and each needs its own hook:
// 1. the WhatsApp WebSocket (`ws`): the socket option `agent`, a SOCKS5 agent with
//    `socks5h` (the proxy resolves names): a failure then reaches Baileys as an error in
//    every `http.connect_failure` mode, so it closes and reconnects (README: "How a
//    failed CONNECT is signalled");
// 2. media uploads, which Baileys 6.x posts with axios: the socket option `fetchAgent`;
//    media downloads with axios take the same agent through `downloadOptions`;
// 3. `fetch()` (Node's built-in undici: media downloads in newer Baileys, and your own
//    code): a global undici `ProxyAgent` dispatcher.
// axios would also apply HTTPS_PROXY from the environment on top of the agent, proxying
// twice: `proxy: false` turns that off.
//
// Write 127.0.0.1, never localhost, in the proxy URL: Node may resolve localhost to ::1.
import { SocksProxyAgent } from "socks-proxy-agent";
import { ProxyAgent, setGlobalDispatcher } from "undici";

export const DEFAULT_PROXY_URL = "http://127.0.0.1:3128";

export function proxyWiring(proxyUrl = process.env.IPV4PROXY_URL ?? DEFAULT_PROXY_URL) {
  setGlobalDispatcher(new ProxyAgent(proxyUrl));
  // The same port speaks SOCKS5: keep host, port and any credentials, change the scheme.
  const url = new URL(proxyUrl);
  const login = url.username ? `${url.username}:${url.password}@` : "";
  const agent = new SocksProxyAgent(`socks5h://${login}${url.host}`);
  return {
    // Spread into makeWASocket({...}).
    socketOptions: { agent, fetchAgent: agent, options: { proxy: false } },
    // Pass to downloadMediaMessage(message, type, downloadOptions).
    downloadOptions: { options: { httpsAgent: agent, proxy: false } },
  };
}
