// A send made while the socket is closing but its `close` event has not run
// yet (a request's timeout closes it so) waits for the next connection. It
// used to find the closing socket again and again in one microtask chain,
// which starved the event loop: the client hung at full CPU for ever. The
// scenario runs in a child process so that a hang fails the test instead of
// hanging the test run.
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { URL_BASE, TOKENS, roomName } from "./env.mjs";

const scenario = `
import { Klav } from ${JSON.stringify(new URL("../klav.js", import.meta.url).href)};
const k = new Klav({ url: ${JSON.stringify(URL_BASE)}, token: ${JSON.stringify(TOKENS.max)}, minDelayMs: 20, maxDelayMs: 50 });
await k.connect();
const room = (await k.join(${JSON.stringify(roomName("closing"))})).room;
k._ws.close(4000, "closing under a send");
const sent = await Promise.all([k.send(room, "one"), k.send(room, "two")]);
const texts = (await k.history(room)).items.filter((e) => e.kind === "msg").map((e) => e.text);
k.close();
console.log(JSON.stringify({ sent: sent.map((m) => m.text), texts }));
`;

test("sends made while the socket closes wait for the next connection and post once", { timeout: 60000 }, () => {
  const r = spawnSync(process.execPath, [...process.execArgv.filter((a) => a.startsWith("--experimental")), "--input-type=module", "-e", scenario], {
    timeout: 30000,
    encoding: "utf8",
  });
  assert.equal(r.signal, null, `the client hung (killed by ${r.signal}); stderr: ${r.stderr}`);
  assert.equal(r.status, 0, r.stderr);
  const out = JSON.parse(r.stdout.trim().split("\n").pop());
  assert.deepEqual(out.sent, ["one", "two"]);
  assert.deepEqual(out.texts.sort(), ["one", "two"]);
});
