// Tokens: `token_expiring` refreshed on the open socket; a token refused at
// the upgrade replaced through `tokenProvider`.
import { test } from "node:test";
import assert from "node:assert/strict";
import { Klav } from "../klav.js";
import { URL_BASE, SHORT_TOKEN, login, until } from "./env.mjs";

test("token_expiring is answered with refresh_token and auth, on the same socket", { timeout: 30000 }, async () => {
  const k = new Klav({ url: URL_BASE, token: SHORT_TOKEN });
  const tokens = [];
  const states = [];
  k.on("token", (t) => tokens.push(t.token));
  k.on("state", (s) => states.push(s.state));
  await k.connect();
  await until(() => tokens.length === 1, 10000, "the refreshed token");
  assert.notEqual(tokens[0], SHORT_TOKEN);
  assert.equal(k.token, tokens[0]);
  assert.deepEqual(states, ["connecting", "online"], "the socket was never dropped");
  assert.equal((await k.myRooms()).type, "my_rooms");
  k.close();
});

test("token_expiring with a tokenProvider uses the provider's token", { timeout: 30000 }, async () => {
  let calls = 0;
  const k = new Klav({
    url: URL_BASE,
    token: SHORT_TOKEN,
    tokenProvider: async () => {
      calls++;
      return login("lea");
    },
  });
  const tokens = [];
  k.on("token", (t) => tokens.push(t.token));
  await k.connect();
  await until(() => tokens.length === 1, 10000, "the provider's token");
  assert.equal(calls, 1);
  assert.equal(k.state, "online");
  k.close();
});

test("a token refused at the upgrade is replaced by tokenProvider", { timeout: 30000 }, async () => {
  let calls = 0;
  const k = new Klav({
    url: URL_BASE,
    token: "not-a-token",
    minDelayMs: 20,
    tokenProvider: async () => {
      calls++;
      return login("ivy");
    },
  });
  await k.connect();
  assert.equal(calls, 1);
  assert.notEqual(k.token, "not-a-token");
  assert.equal((await k.myRooms()).type, "my_rooms");
  k.close();
});
