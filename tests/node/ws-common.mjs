// Shared by the WebSocket client scripts: one echo round trip, bounded in time.
import { createHash } from "node:crypto";
import WebSocket from "ws";

// Bound on the whole run; the Python side also bounds the process.
const DEADLINE_MS = 20000;
// Must match tests/helpers/servers.py BINARY_WS_SIZE and binary_ws_message().
const BINARY_SIZE = 300000;

function binaryMessage() {
  const data = Buffer.alloc(BINARY_SIZE);
  for (let i = 0; i < BINARY_SIZE; i += 1) data[i] = i % 251;
  return data;
}

// The error as data, for a test to assert on: an AggregateError (Happy Eyeballs giving up)
// carries one error per address tried, each with its code and address.
function describe(error) {
  const one = (e) => ({ name: e.name, code: e.code ?? null, message: e.message, address: e.address ?? null });
  return { ...one(error), errors: (error.errors ?? []).map(one) };
}

export function echoOnce(url, text, options) {
  return new Promise((resolve) => {
    const timer = setTimeout(() => {
      console.error(`timed out after ${DEADLINE_MS} ms`);
      process.exit(2);
    }, DEADLINE_MS);
    const ws = options === undefined ? new WebSocket(url) : new WebSocket(url, options);
    const result = {};
    ws.on("open", () => {
      ws.send(text);
    });
    ws.on("message", (data, isBinary) => {
      if (!isBinary) {
        result.text = data.toString("utf8");
        ws.send(binaryMessage());
        return;
      }
      result.binarySize = data.length;
      result.binarySha256 = createHash("sha256").update(data).digest("hex");
      ws.close(1000);
    });
    ws.on("close", () => {
      clearTimeout(timer);
      console.log(JSON.stringify(result));
      resolve();
    });
    ws.on("error", (error) => {
      clearTimeout(timer);
      console.error(`error: ${error.code ?? ""} ${error.message}`);
      if (error.errors) for (const inner of error.errors) console.error(`  ${inner.code ?? ""} ${inner.message}`);
      console.error(`failure ${JSON.stringify(describe(error))}`);
      process.exit(1);
    });
  });
}
