// Exactly once under faults: 300 messages from two clients while a proxy
// between them and the server resets every socket every few hundred ms.
import { test } from "node:test";
import assert from "node:assert/strict";
import { Klav } from "../klav.js";
import { TOKENS, proxy, roomName, until, fullHistory } from "./env.mjs";

const PER_SENDER = 150;

test("300 sends through repeated connection resets: each posted once, seen once and in id order", { timeout: 240000 }, async () => {
  const px = await proxy();
  const opts = { url: px.url, minDelayMs: 20, maxDelayMs: 200, requestTimeoutMs: 5000 };
  const names = ["fay", "gus", "hal"];
  const clients = names.map((n) => new Klav({ ...opts, token: TOKENS[n] }));
  /** What each client's handlers saw, in order. */
  const seen = clients.map(() => []);
  clients.forEach((k, i) => k.on("message", (m) => seen[i].push(m)));
  let offline = 0;
  clients[0].on("state", (s) => {
    if (s.state === "offline") offline++;
  });
  await Promise.all(clients.map((k) => k.connect()));
  const room = (await clients[0].join(roomName("faults"))).room;
  await clients[1].join(room);
  await clients[2].join(room);

  px.chaos(300);
  const resolved = new Map();
  const sends = [];
  // The two senders take turns, ten sends each, so that both have sends in
  // flight across many cuts.
  for (let n = 0; n < PER_SENDER; n++) {
    for (const [i, k] of clients.slice(0, 2).entries()) {
      const text = `${names[i]} #${n}`;
      sends.push(
        k.send(room, text).then((m) => {
          resolved.set(text, (resolved.get(text) ?? 0) + 1);
          assert.equal(m.text, text);
          return m;
        }),
      );
    }
    if (n % 10 === 9) await new Promise((r) => setTimeout(r, 100));
  }
  const stored = await Promise.all(sends);
  px.calm();
  assert.ok(px.cuts >= 4, `the connection was cut ${px.cuts} times`);
  assert.ok(offline >= 4, `the sender went offline ${offline} times`);
  assert.equal(resolved.size, 2 * PER_SENDER);
  for (const [text, count] of resolved) assert.equal(count, 1, `${text} resolved ${count} times`);
  const ids = new Set(stored.map((m) => m.id));
  assert.equal(ids.size, 2 * PER_SENDER, "every send has its own entry");

  // History holds each text exactly once.
  const items = (await fullHistory(clients[2], room)).filter((e) => e.kind === "msg");
  assert.equal(items.length, 2 * PER_SENDER);
  assert.equal(new Set(items.map((e) => e.text)).size, 2 * PER_SENDER);

  // Each client sees each message exactly once, in id order.
  for (const [i, list] of seen.entries()) {
    await until(() => list.length >= 2 * PER_SENDER, 60000, `${names[i]}'s messages (${list.length})`);
    await new Promise((r) => setTimeout(r, 200));
    const got = list.map((m) => m.id);
    assert.equal(got.length, 2 * PER_SENDER, `${names[i]} saw ${got.length}`);
    assert.equal(new Set(got).size, got.length, `${names[i]} saw a message twice`);
    for (let j = 1; j < got.length; j++) assert.ok(got[j] > got[j - 1], `${names[i]}: ${got[j]} after ${got[j - 1]}`);
    assert.deepEqual(new Set(got), ids);
  }
  clients.forEach((k) => k.close());
  await px.close();
});
