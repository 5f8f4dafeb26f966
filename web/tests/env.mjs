// What the Rust test (tests/it/klav_js.rs) hands the Node tests, and small
// tools they share: a TCP proxy that can cut every connection, and waiting.
import net from "node:net";

export const URL_BASE = process.env.KLAV_URL;
export const TOKENS = JSON.parse(process.env.KLAV_TOKENS ?? "{}");
export const PASSWORD = process.env.KLAV_PASSWORD;
export const SHORT_TOKEN = process.env.KLAV_SHORT_TOKEN;
if (!URL_BASE) throw new Error("KLAV_URL is not set: run these tests through `cargo test --test it klav_js`");

/** A fresh token for `user` from `POST /login`. */
export async function login(user) {
  const r = await fetch(`${URL_BASE}/login`, {
    method: "POST",
    body: JSON.stringify({ username: user, password: PASSWORD }),
  });
  if (r.status !== 200) throw new Error(`login ${user}: ${r.status}`);
  return (await r.json()).access_token;
}

/** A room name no other test uses. */
export const roomName = (what) => `${what}-${process.pid}-${Math.random().toString(16).slice(2, 8)}`;

/** Resolves when `cond()` holds; fails after `ms`. */
export async function until(cond, ms = 20000, what = "condition") {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

/**
 * A TCP proxy in front of the server. `cut()` resets every connection through
 * it; `chaos(ms)` does so every `ms` (± half) until `calm()`; `down()` refuses
 * new connections until `up()`.
 */
export async function proxy() {
  const [host, port] = new URL(URL_BASE).host.split(":");
  const pairs = new Set();
  let refusing = false;
  let timer = null;
  const server = net.createServer((client) => {
    if (refusing) {
      client.resetAndDestroy();
      return;
    }
    const upstream = net.connect(Number(port), host);
    const pair = { client, upstream };
    pairs.add(pair);
    const end = () => {
      pairs.delete(pair);
      if (!client.destroyed) client.resetAndDestroy();
      if (!upstream.destroyed) upstream.resetAndDestroy();
    };
    client.on("error", end).on("close", end);
    upstream.on("error", end).on("close", end);
    client.pipe(upstream);
    upstream.pipe(client);
  });
  await new Promise((r) => server.listen(0, "127.0.0.1", r));
  const p = {
    url: `http://127.0.0.1:${server.address().port}`,
    cuts: 0,
    cut() {
      p.cuts++;
      for (const { client, upstream } of [...pairs]) {
        client.resetAndDestroy();
        upstream.resetAndDestroy();
      }
      pairs.clear();
    },
    chaos(ms) {
      const tick = () => {
        p.cut();
        timer = setTimeout(tick, Math.round(ms * (0.5 + Math.random())));
      };
      timer = setTimeout(tick, ms);
    },
    calm() {
      clearTimeout(timer);
    },
    down() {
      refusing = true;
      p.cut();
    },
    up() {
      refusing = false;
    },
    async close() {
      p.calm();
      p.cut();
      await new Promise((r) => server.close(r));
    },
  };
  return p;
}

/** Every entry of a room, oldest first, paging `history` back with `before_id`. */
export async function fullHistory(k, room) {
  let items = [];
  let before;
  for (;;) {
    const page = await k.history(room, { limit: 200, ...(before ? { before_id: before } : {}) });
    items = page.items.concat(items);
    if (page.items.length < 200) return items;
    before = page.items[0].id;
  }
}
