// Download a URL with `https.get` and a proxy agent (the media path); print its size and hash.
//
// usage: node https-get.mjs https-proxy-agent|socks-proxy-agent PROXY_URL URL
// Trust comes from NODE_EXTRA_CA_CERTS. Prints {"status": N, "size": N, "sha256": HEX} on
// success; on failure prints the error to stderr and exits 1. A hard timer bounds the run.
import { createHash } from "node:crypto";
import https from "node:https";
import { HttpsProxyAgent } from "https-proxy-agent";
import { SocksProxyAgent } from "socks-proxy-agent";

const DEADLINE_MS = 20000;
const [kind, proxyUrl, url] = process.argv.slice(2);
const agents = {
  "https-proxy-agent": () => new HttpsProxyAgent(proxyUrl),
  "socks-proxy-agent": () => new SocksProxyAgent(proxyUrl),
};
if (!(kind in agents) || !proxyUrl || !url) {
  console.error("usage: node https-get.mjs https-proxy-agent|socks-proxy-agent PROXY_URL URL");
  process.exit(64);
}
const timer = setTimeout(() => {
  console.error(`timed out after ${DEADLINE_MS} ms`);
  process.exit(2);
}, DEADLINE_MS);
https
  .get(url, { agent: agents[kind]() }, (response) => {
    const hash = createHash("sha256");
    let size = 0;
    response.on("data", (chunk) => {
      hash.update(chunk);
      size += chunk.length;
    });
    response.on("end", () => {
      clearTimeout(timer);
      console.log(JSON.stringify({ status: response.statusCode, size, sha256: hash.digest("hex") }));
      process.exit(0);
    });
  })
  .on("error", (error) => {
    clearTimeout(timer);
    console.error(`error: ${error.code ?? ""} ${error.message}`);
    process.exit(1);
  });
