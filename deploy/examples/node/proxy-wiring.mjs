// Route every connection a Baileys gateway opens through ipv4proxy (Baileys 6.17 and 7).
//
// Three paths leave a Baileys process, and each needs its own hook:
// 1. the WhatsApp WebSocket (`ws`): the socket option `agent`, a SOCKS5 agent with
//    `socks5h` (the proxy resolves names): a failure then reaches Baileys as an error in
//    every `http.connect_failure` mode, so it closes and reconnects (docs/clients.md: "How a
//    failed CONNECT is signalled");
// 2. media uploads: the socket option `fetchAgent` (axios in Baileys 6.x, `https.request`
//    in Baileys 7 on Node);
// 3. media downloads: axios in Baileys 6.x (the agent, through `downloadOptions`), Node's
//    built-in `fetch()` in Baileys 7, which ignores agents and HTTPS_PROXY on Node 20: it
//    needs an undici dispatcher, given per call (`dispatcher` in `downloadOptions` and in
//    the socket's `options`) and globally (`setGlobalDispatcher`, for any other fetch()
//    of the process, your own code included). undici must be 7.x on Node 20 (8.x throws
//    when loaded).
// axios would also apply HTTPS_PROXY from the environment on top of the agent, proxying
// twice: `proxy: false` turns that off (fetch ignores the key).
//
// Write 127.0.0.1, never localhost, in the proxy URL: Node may resolve localhost to ::1.
import { SocksProxyAgent } from "socks-proxy-agent";
import { ProxyAgent, setGlobalDispatcher } from "undici";

export const DEFAULT_PROXY_URL = "http://127.0.0.1:3128";

export function proxyWiring(proxyUrl = process.env.IPV4PROXY_URL ?? DEFAULT_PROXY_URL) {
  // fetch() through HTTP CONNECT: undici has no SOCKS dispatcher of its own.
  const dispatcher = new ProxyAgent(proxyUrl);
  setGlobalDispatcher(dispatcher);
  // The same port speaks SOCKS5: keep host, port and any credentials, change the scheme.
  const url = new URL(proxyUrl);
  const login = url.username ? `${url.username}:${url.password}@` : "";
  const agent = new SocksProxyAgent(`socks5h://${login}${url.host}`);
  return {
    dispatcher,
    // Spread into makeWASocket({...}).
    socketOptions: { agent, fetchAgent: agent, options: { proxy: false, dispatcher } },
    // Pass to downloadMediaMessage(message, type, downloadOptions) and
    // downloadContentFromMessage(media, type, downloadOptions).
    downloadOptions: { options: { httpsAgent: agent, proxy: false, dispatcher } },
  };
}
