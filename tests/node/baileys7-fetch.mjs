// Baileys 7's media download (its own getHttpStream: Node's built-in fetch) wired one way.
//
// usage: node baileys7-fetch.mjs none|agent|dispatcher|global-env PROXY_URL URL
//   none        no proxy option (HTTPS_PROXY, if set, is all there is)
//   agent       an https-proxy-agent as `agent` and `httpsAgent` (Baileys 6.17's way)
//   dispatcher  an undici ProxyAgent as `dispatcher`, per call
//   global-env  setGlobalDispatcher(new EnvHttpProxyAgent()): the proxy from HTTPS_PROXY
// Trust comes from NODE_EXTRA_CA_CERTS. Prints {"outcome": "ok", "size": N} once the body
// is read, or {"outcome": "error", "detail": "..."}; exits 0 either way. A hard timer
// bounds the run.
import { HttpsProxyAgent } from "https-proxy-agent";
import { EnvHttpProxyAgent, ProxyAgent, setGlobalDispatcher } from "undici";

const DEADLINE_MS = 20000;
const [how, proxyUrl, url] = process.argv.slice(2);
const wirings = {
  none: () => ({}),
  agent: () => {
    const agent = new HttpsProxyAgent(proxyUrl);
    return { agent, httpsAgent: agent };
  },
  dispatcher: () => ({ dispatcher: new ProxyAgent(proxyUrl) }),
  "global-env": () => {
    setGlobalDispatcher(new EnvHttpProxyAgent());
    return {};
  },
};
if (!(how in wirings) || !proxyUrl || !url) {
  console.error("usage: node baileys7-fetch.mjs none|agent|dispatcher|global-env PROXY_URL URL");
  process.exit(64);
}
const timer = setTimeout(() => {
  console.error(`timed out after ${DEADLINE_MS} ms`);
  process.exit(2);
}, DEADLINE_MS);

function describe(error) {
  const inner = error?.cause ? ` (cause: ${describe(error.cause)})` : "";
  return `${error?.code ?? error?.name ?? ""} ${error?.message ?? String(error)}${inner}`.trim();
}

const { getHttpStream } = await import("baileys7");
let result;
try {
  const stream = await getHttpStream(new URL(url), wirings[how]());
  let size = 0;
  for await (const chunk of stream) size += chunk.length;
  result = { outcome: "ok", size };
} catch (error) {
  result = { outcome: "error", detail: describe(error) };
}
clearTimeout(timer);
console.log(JSON.stringify(result));
process.exit(0);
