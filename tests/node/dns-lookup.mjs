// Resolve names the way ws, fetch and https.get do: dns.lookup (getaddrinfo, which reads
// /etc/resolv.conf). The test runs this in a mount namespace whose resolv.conf names the
// DNS listener, so nothing in the client points at the proxy.
//   node dns-lookup.mjs name...
// Prints one JSON object: {"name": {"ok": [{address, family}, ...]} or {"error": CODE}}.
import { promises as dns } from "node:dns";

const results = {};
for (const name of process.argv.slice(2)) {
  try {
    results[name] = { ok: await dns.lookup(name, { all: true }) };
  } catch (error) {
    results[name] = { error: error.code ?? String(error) };
  }
}
process.stdout.write(JSON.stringify(results) + "\n");
