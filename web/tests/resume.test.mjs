// Resume after a reconnect: what was missed arrives once, in id order, and a
// send made while offline goes out once the connection is back.
import { test } from "node:test";
import assert from "node:assert/strict";
import { Klav } from "../klav.js";
import { URL_BASE, TOKENS, proxy, roomName, until } from "./env.mjs";

test("after a reconnect resume brings what was missed, once and in order; offline sends go out once", { timeout: 30000 }, async () => {
  const px = await proxy();
  const a = new Klav({ url: px.url, token: TOKENS.jon, minDelayMs: 50, maxDelayMs: 200 });
  const b = new Klav({ url: URL_BASE, token: TOKENS.kit });
  const gotA = [];
  const gotB = [];
  const states = [];
  const acks = [];
  a.on("message", (m) => gotA.push(m));
  b.on("message", (m) => gotB.push(m));
  a.on("state", (s) => states.push(s));
  a.on("resume_ack", (r) => acks.push(r));
  await Promise.all([a.connect(), b.connect()]);
  const room = (await b.join(roomName("resume"))).room;
  await a.join(room);
  const first = await b.send(room, "before the cut");
  await until(() => gotA.length === 1, 5000, "the live message");

  px.down();
  await until(() => a.state !== "online", 5000, "the cut to be noticed");
  const offline = states.find((s) => s.state === "offline");
  assert.equal(typeof offline.retryInMs, "number");
  const pending = a.send(room, "sent while offline");
  const missed = [];
  for (let i = 0; i < 5; i++) missed.push((await b.send(room, `missed ${i}`)).id);
  await new Promise((r) => setTimeout(r, 300));
  assert.equal(gotA.length, 1, "nothing arrives while the connection is down");
  px.up();
  const mine = await pending;
  assert.equal(mine.text, "sent while offline");
  await until(() => gotA.length === 7, 10000, "the replay and the offline send");
  assert.deepEqual(gotA.map((m) => m.id), [first.id, ...missed, mine.id]);
  const ack = acks.at(-1);
  assert.equal(ack.rooms[room].recovered, true);
  assert.equal(ack.rooms[room].count, 5);
  await until(() => gotB.length === 7, 5000, "kit's copy of the offline send");
  assert.equal(gotB.filter((m) => m.id === mine.id).length, 1);
  // And live traffic carries on after the resume.
  const after = await b.send(room, "after");
  await until(() => gotA.length === 8, 5000, "live after resume");
  assert.equal(gotA.at(-1).id, after.id);
  assert.equal(a.cursor(room), after.id);
  a.close();
  b.close();
  await px.close();
});
