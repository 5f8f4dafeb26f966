// Exactly once across server restarts and node switches: run by
// tests/it/klav_js.rs (`klav_js_exactly_once_across_restarts_and_nodes`), which
// puts two cluster nodes behind a proxy that sends each new connection to the
// next node, and kills or stops one node after the other and starts it again
// while this runs. Not a `.test.mjs`: it needs that Rust side around it.
import { test } from "node:test";
import assert from "node:assert/strict";
import { Klav } from "../klav.js";
import { TOKENS, URL_BASE, roomName, until, fullHistory } from "./env.mjs";

const PER_SENDER = 150;

test("300 sends while the nodes restart: each posted once, seen once and in id order", { timeout: 240000 }, async () => {
  const opts = { url: URL_BASE, minDelayMs: 20, maxDelayMs: 300, requestTimeoutMs: 5000 };
  const names = ["fay", "gus", "hal"];
  const clients = names.map((n) => new Klav({ ...opts, token: TOKENS[n] }));
  const seen = clients.map(() => []);
  clients.forEach((k, i) => k.on("message", (m) => seen[i].push(m)));
  const offline = clients.map(() => 0);
  clients.forEach((k, i) =>
    k.on("state", (s) => {
      if (s.state === "offline") offline[i]++;
    }),
  );
  await Promise.all(clients.map((k) => k.connect()));
  // Joining may meet a restart too: a refused join is tried again.
  const retry = async (f) => {
    for (let n = 0; ; n++) {
      try {
        return await f();
      } catch (e) {
        if (n > 50) throw e;
        await new Promise((r) => setTimeout(r, 100));
      }
    }
  };
  const room = (await retry(() => clients[0].join(roomName("restarts")))).room;
  await retry(() => clients[1].join(room));
  await retry(() => clients[2].join(room));

  const resolved = new Map();
  const sends = [];
  // Five sends from each sender every 150 ms: sending lasts several restarts.
  for (let n = 0; n < PER_SENDER; n++) {
    for (const [i, k] of clients.slice(0, 2).entries()) {
      const text = `${names[i]} restart #${n}`;
      sends.push(
        k.send(room, text).then((m) => {
          resolved.set(text, (resolved.get(text) ?? 0) + 1);
          assert.equal(m.text, text);
          return m;
        }),
      );
    }
    if (n % 5 === 4) await new Promise((r) => setTimeout(r, 150));
  }
  const stored = await Promise.all(sends);
  assert.ok(offline[0] >= 3 && offline[1] >= 3, `the senders went offline ${offline} times`);
  assert.equal(resolved.size, 2 * PER_SENDER);
  for (const [text, count] of resolved) assert.equal(count, 1, `${text} resolved ${count} times`);
  const ids = new Set(stored.map((m) => m.id));
  assert.equal(ids.size, 2 * PER_SENDER, "every send has its own entry");

  const items = (await retry(() => fullHistory(clients[2], room))).filter((e) => e.kind === "msg");
  assert.equal(items.length, 2 * PER_SENDER, "history holds every send once");
  assert.equal(new Set(items.map((e) => e.text)).size, 2 * PER_SENDER);

  for (const [i, list] of seen.entries()) {
    await until(() => list.length >= 2 * PER_SENDER, 90000, `${names[i]}'s messages (${list.length})`);
    await new Promise((r) => setTimeout(r, 300));
    const got = list.map((m) => m.id);
    assert.equal(got.length, 2 * PER_SENDER, `${names[i]} saw ${got.length}`);
    assert.equal(new Set(got).size, got.length, `${names[i]} saw a message twice`);
    for (let j = 1; j < got.length; j++) assert.ok(got[j] > got[j - 1], `${names[i]}: ${got[j]} after ${got[j - 1]}`);
    assert.deepEqual(new Set(got), ids);
  }
  clients.forEach((k) => k.close());
});
