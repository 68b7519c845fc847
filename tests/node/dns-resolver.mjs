// Ask the DNS listener through Node's own resolver (c-ares): dns.promises.Resolver pointed
// at one server with setServers, as a client that takes no proxy setting would.
//   node dns-resolver.mjs 127.0.0.1:PORT A:name AAAA:name ANY:name ...
// Prints one JSON object: {"TYPE:name": {"ok": [...]} or {"error": "ENODATA"}, ...}.
import { promises as dns } from "node:dns";

const [server, ...questions] = process.argv.slice(2);
const resolver = new dns.Resolver({ timeout: 3000, tries: 2 });
resolver.setServers([server]);

const methods = {
  A: (name) => resolver.resolve4(name, { ttl: true }),
  AAAA: (name) => resolver.resolve6(name),
  ANY: (name) => resolver.resolveAny(name),
  CNAME: (name) => resolver.resolveCname(name),
};

const results = {};
for (const question of questions) {
  const [type, name] = question.split(":");
  try {
    results[question] = { ok: await methods[type](name) };
  } catch (error) {
    results[question] = { error: error.code ?? String(error) };
  }
}
process.stdout.write(JSON.stringify(results) + "\n");
