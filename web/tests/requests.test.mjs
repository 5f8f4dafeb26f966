// Request and reply, error codes, `send` exactly once, the helpers.
import { test } from "node:test";
import assert from "node:assert/strict";
import { Klav } from "../klav.js";
import { URL_BASE, TOKENS, roomName, until } from "./env.mjs";

test("request resolves with the reply and rejects with the server's error code", { timeout: 30000 }, async () => {
  const k = new Klav({ url: URL_BASE, token: TOKENS.ana });
  const states = [];
  k.on("state", (s) => states.push(s.state));
  await k.connect();
  assert.equal(k.state, "online");
  assert.deepEqual(states.slice(0, 2), ["connecting", "online"]);
  const created = await k.createRoom(roomName("req"));
  assert.equal(created.type, "create_room_ack");
  assert.equal(created.status, "CREATED");
  await assert.rejects(k.request({ type: "no_such_request" }), (e) => e instanceof Error && e.code === "UNKNOWN_TYPE");
  await assert.rejects(k.history(created.room_id), (e) => e.code === "NOT_A_MEMBER");
  await assert.rejects(k.join("r_00000000"), (e) => e.code === "ROOM_NOT_FOUND");
  await assert.rejects(k.send(created.room_id, "not yet a member"), (e) => e.code === "NOT_A_MEMBER");
  await k.join(created.room_id);
  await assert.rejects(k.send(created.room_id, "x".repeat(4001)), (e) => e.code === "TEXT_TOO_LONG");
  const rooms = await k.myRooms();
  assert.ok(rooms.rooms.includes(created.room_id));
  const members = await k.members(created.room_id);
  assert.deepEqual(members.members.map((m) => m.username), ["ana"]);
  k.close();
  assert.equal(k.state, "offline");
  await assert.rejects(k.request({ type: "my_rooms" }), (e) => e.code === "CLOSED");
});

test("send posts exactly once and every message reaches handlers exactly once, the sender's echo included", { timeout: 30000 }, async () => {
  const a = new Klav({ url: URL_BASE, token: TOKENS.ben });
  const b = new Klav({ url: URL_BASE, token: TOKENS.cleo });
  const seenA = [];
  const seenB = [];
  a.on("message", (m) => seenA.push(m));
  b.on("message", (m) => seenB.push(m));
  await Promise.all([a.connect(), b.connect()]);
  const room = (await a.join(roomName("send"))).room;
  await b.join(room);
  const stored = await a.send(room, "hello");
  assert.equal(stored.type, "message");
  assert.equal(stored.text, "hello");
  assert.equal(typeof stored.id, "number");
  assert.equal(typeof stored.client_id, "string");
  // The same client_id again (a retry after a lost reply) gets the original back.
  const again = await a.send(room, "hello", { clientId: stored.client_id });
  assert.equal(again.id, stored.id);
  await until(() => seenB.length >= 1, 5000, "bob's copy");
  await new Promise((r) => setTimeout(r, 300));
  assert.deepEqual(seenA.map((m) => m.id), [stored.id]);
  assert.deepEqual(seenB.map((m) => m.id), [stored.id]);
  // A DM resolves with its dm_ack.
  const ack = await a.send(room, "psst", { to: "cleo" });
  assert.equal(ack.type, "dm_ack");
  assert.equal(ack.status, "DELIVERED");
  // Edit and delete reach both: the editor through the reply, the other live.
  const edited = [];
  a.on("message_edited", (e) => edited.push(["a", e.id]));
  b.on("message_edited", (e) => edited.push(["b", e.id]));
  await a.edit(stored.id, "hello!");
  await until(() => edited.length === 2, 5000, "edits");
  const read = await b.read(room, stored.id);
  assert.equal(read.type, "read_ack");
  await assert.rejects(b.delete(stored.id), (e) => e.code === "NOT_AUTHOR");
  const del = await a.delete(stored.id);
  assert.equal(del.type, "message_deleted");
  a.close();
  b.close();
});

test("the v3 helpers: room info, roles, invitations, moderation, blocks, member presence", { timeout: 30000 }, async () => {
  const owner = new Klav({ url: URL_BASE, token: TOKENS.dov });
  const other = new Klav({ url: URL_BASE, token: TOKENS.eli });
  await Promise.all([owner.connect(), other.connect()]);
  const invited = [];
  other.on("invited", (e) => invited.push(e));
  const created = await owner.createRoom(roomName("v3"), { private: true, topic: "plans" });
  assert.equal(created.private, true);
  const room = created.room_id;
  const info = await owner.roomInfo(room);
  assert.equal(info.owner, "dov");
  assert.equal(info.topic, "plans");
  const upd = await owner.roomUpdate(room, { topic: "new plans" });
  assert.equal(upd.type, "room_updated");
  assert.equal((await owner.invite(room, "eli")).status, "INVITED");
  await until(() => invited.length === 1, 5000, "invited event");
  assert.equal((await other.myInvites()).invites[0].room, room);
  await other.join(room);
  const watched = await owner.watchMembers(room);
  assert.equal(watched.members.length, 2);
  assert.equal((await owner.unwatchMembers(room)).type, "unwatch_ack");
  assert.equal((await owner.setRole(room, "eli", "admin")).role, "admin");
  assert.equal((await owner.setRole(room, "eli", "member")).role, "member");
  assert.equal((await owner.kick(room, "eli", "testing")).status, "KICKED");
  assert.equal((await owner.ban(room, "eli")).status, "BANNED");
  assert.equal((await owner.roomBans(room)).bans[0].username, "eli");
  assert.equal((await owner.unban(room, "eli")).status, "UNBANNED");
  await assert.rejects(owner.setRole(room, "nobody-registered", "admin"), (e) => e.code === "USER_NOT_FOUND");
  assert.equal((await owner.invite(room, "eli")).status, "INVITED");
  assert.equal((await other.declineInvite(room)).status, "DECLINED");
  assert.equal((await other.block("dov")).status, "BLOCKED");
  assert.deepEqual((await other.blockedList()).blocked.map((b) => b.username), ["dov"]);
  assert.equal((await other.unblock("dov")).status, "UNBLOCKED");
  await other.join(roomName("v3-pub")).then(async (j) => {
    assert.equal((await other.transferOwner(j.room, "eli")).role, "owner");
    assert.equal((await other.leave(j.room)).status, "LEFT");
  });
  owner.close();
  other.close();
});
