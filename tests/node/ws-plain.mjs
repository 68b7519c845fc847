// Open a WebSocket with plain `new WebSocket(url)`: no agent, no proxy code at all.
//
// usage: node -r global-agent/bootstrap ws-plain.mjs WS_URL TEXT
// with GLOBAL_AGENT_HTTP_PROXY set: any proxying comes from the preloaded module alone.
// Output and exit codes as in ws-agent.mjs.
import { echoOnce } from "./ws-common.mjs";

const [wsUrl, text] = process.argv.slice(2);
if (!wsUrl || text === undefined) {
  console.error("usage: node ws-plain.mjs WS_URL TEXT");
  process.exit(64);
}
await echoOnce(wsUrl, text, undefined);
