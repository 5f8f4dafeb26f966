// klav.js — a client for Klav's WebSocket protocol (docs/protocol.md).
//
// One ES module, no dependencies, no build step. Runs in browsers and in
// Node >= 20 (`node --experimental-websocket`, or pass a `WebSocket` constructor).
//
// What it does for an app: one socket, reconnected with exponential backoff
// and jitter; `resume` after every reconnect with the last entry id seen per
// room; every entry event (`message`, `dm`, `system`, …) handed to handlers
// exactly once and in id order per room; `send` with a `client_id` that stays
// pending across reconnects and is retried until the server acknowledges it
// (the server dedupes by `client_id`, so each call posts exactly once); token
// refresh on `token_expiring` without dropping the socket.

/**
 * @typedef {{ [key: string]: any, type: string }} KlavEvent
 * @typedef {(event: any) => void} Handler
 * @typedef {"online" | "connecting" | "offline"} KlavState
 * @typedef {{
 *   url: string,
 *   token: string,
 *   tokenProvider?: () => Promise<string>,
 *   WebSocket?: any,
 *   cursors?: Record<string, number>,
 *   minDelayMs?: number,
 *   maxDelayMs?: number,
 *   resetAfterMs?: number,
 *   requestTimeoutMs?: number,
 *   connectTimeoutMs?: number,
 * }} KlavOptions
 */

/** Event types that are log entries: they carry `room` and a numeric `id`. */
const ENTRY_TYPES = new Set(["message", "dm", "system", "room_updated"]);
/** Replies that are also events the requesting connection gets only as a reply. */
const EVENT_REPLIES = new Set(["message", "message_edited", "message_deleted", "room_updated"]);
/** Errors a send waits out and retries with the same `client_id`. */
const RETRYABLE = new Set(["RATE_LIMITED", "UNAVAILABLE", "DISCONNECTED", "TIMEOUT"]);
/** Close reasons after which reconnecting cannot help. */
const FINAL_CLOSES = new Set(["session revoked", "account deleted"]);
/** `resume` takes at most this many rooms. */
const MAX_RESUME_ROOMS = 100;

/**
 * An `Error` with the server's error code.
 * @param {string} code
 * @param {string} [detail]
 * @param {any} [reply]
 */
function klavError(code, detail, reply) {
  const e = /** @type {Error & { code: string, reply?: any }} */ (
    new Error(detail ? `${code}: ${detail}` : code)
  );
  e.code = code;
  if (reply !== undefined) e.reply = reply;
  return e;
}

/** @param {number} ms */
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** @returns {string} */
function uuid() {
  const c = globalThis.crypto;
  if (c && typeof c.randomUUID === "function") return c.randomUUID();
  const b = new Uint8Array(16);
  if (c && typeof c.getRandomValues === "function") c.getRandomValues(b);
  else for (let i = 0; i < 16; i++) b[i] = Math.floor(Math.random() * 256);
  b[6] = (b[6] & 0x0f) | 0x40;
  b[8] = (b[8] & 0x3f) | 0x80;
  const h = Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}

export class Klav {
  /** @param {KlavOptions} options */
  constructor(options) {
    if (!options || typeof options.url !== "string") throw new TypeError("Klav: url required");
    const WS = options.WebSocket ?? globalThis.WebSocket;
    if (typeof WS !== "function") {
      throw new TypeError("Klav: no WebSocket (pass one, or run node with --experimental-websocket)");
    }
    /** @type {any} */
    this._WS = WS;
    /** The http(s) base, without a trailing slash. */
    this.url = options.url.replace(/\/+$/, "");
    /** The token the next connection (or `auth`) uses. */
    this.token = options.token;
    this._tokenProvider = options.tokenProvider;
    this._minDelay = options.minDelayMs ?? 500;
    this._maxDelay = options.maxDelayMs ?? 30000;
    this._resetAfter = options.resetAfterMs ?? 60000;
    this._timeout = options.requestTimeoutMs ?? 30000;
    this._connectTimeout = options.connectTimeoutMs ?? 10000;
    /** @type {Map<string, Set<Handler>>} */
    this._handlers = new Map();
    /** Highest entry id seen per room. @type {Map<string, number>} */
    this._cursors = new Map(Object.entries(options.cursors ?? {}));
    /** @type {Map<string, { resolve: (v: any) => void, reject: (e: any) => void, timer: any, match?: (f: any) => boolean }>} */
    this._pending = new Map();
    this._nextReq = 1;
    /** @type {any} */
    this._ws = null;
    /** @type {KlavState} */
    this.state = "offline";
    this._closed = true;
    this._attempt = 0;
    /** @type {any} */
    this._retryTimer = null;
    /** @type {any} */
    this._resetTimer = null;
    /** @type {Array<{ resolve: () => void, reject: (e: any) => void }>} */
    this._onlineWaiters = [];
    this._refreshing = false;
    this._upSince = 0;
    /** Rooms whose member presence this client watches (again after a reconnect). @type {Set<string>} */
    this._watched = new Set();
    /** @type {string | null} */
    this._subOf = null;
    /** @type {string | null} */
    this._sub = null;
  }

  // ---- events ----------------------------------------------------------

  /**
   * Calls `fn` for every event of `type` (any server event type, or `state`).
   * @param {string} type
   * @param {Handler} fn
   */
  on(type, fn) {
    let set = this._handlers.get(type);
    if (!set) this._handlers.set(type, (set = new Set()));
    set.add(fn);
    return this;
  }

  /**
   * @param {string} type
   * @param {Handler} fn
   */
  off(type, fn) {
    this._handlers.get(type)?.delete(fn);
    return this;
  }

  /**
   * @param {string} type
   * @param {any} event
   */
  _emit(type, event) {
    const set = this._handlers.get(type);
    if (!set) return;
    for (const fn of [...set]) {
      try {
        fn(event);
      } catch (e) {
        // A handler's failure must not break the connection's bookkeeping.
        queueMicrotask(() => {
          throw e;
        });
      }
    }
  }

  /**
   * @param {KlavState} state
   * @param {number} [retryInMs]
   */
  _setState(state, retryInMs) {
    this.state = state;
    /** @type {{ state: KlavState, retryInMs?: number }} */
    const ev = { state };
    if (retryInMs !== undefined) ev.retryInMs = retryInMs;
    this._emit("state", ev);
    if (state === "online") {
      const w = this._onlineWaiters.splice(0);
      for (const x of w) x.resolve();
    }
  }

  /** The user the current token names (its `sub`), or `null`. */
  username() {
    if (this._subOf === this.token) return this._sub;
    let sub = null;
    try {
      const part = String(this.token).split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
      const bin = atob(part + "=".repeat((4 - (part.length % 4)) % 4));
      const json = new TextDecoder().decode(Uint8Array.from(bin, (c) => c.charCodeAt(0)));
      sub = JSON.parse(json).sub ?? null;
    } catch {
      sub = null;
    }
    this._subOf = this.token;
    this._sub = sub;
    return sub;
  }

  /** The highest entry id seen in `room` (0 when none). @param {string} room */
  cursor(room) {
    return this._cursors.get(room) ?? 0;
  }

  // ---- connection ------------------------------------------------------

  /** Opens the socket; resolves once it is open and resumed. */
  connect() {
    if (this._closed) {
      this._closed = false;
      this._attempt = 0;
      this._open();
    }
    return this._whenOnline();
  }

  /** Closes the socket for good; pending requests and sends reject with `CLOSED`. */
  close() {
    this._closed = true;
    clearTimeout(this._retryTimer);
    clearTimeout(this._resetTimer);
    const ws = this._ws;
    this._ws = null;
    if (ws) {
      try {
        ws.close(1000);
      } catch {
        // already closing
      }
    }
    this._failPending(klavError("CLOSED"));
    const w = this._onlineWaiters.splice(0);
    for (const x of w) x.reject(klavError("CLOSED"));
    if (this.state !== "offline") this._setState("offline");
  }

  /** @returns {Promise<void>} */
  _whenOnline() {
    // A socket that is closing (closed by a request's timeout, say) still
    // counts as online until its `close` event runs: it is not, or a send's
    // retry would find it again and again without ever yielding to that event.
    if (this.state === "online" && this._ws && this._ws.readyState === 1) return Promise.resolve();
    if (this._closed) return Promise.reject(klavError("CLOSED"));
    return new Promise((resolve, reject) => this._onlineWaiters.push({ resolve, reject }));
  }

  _socketUrl() {
    const base = this.url.replace(/^http/i, "ws");
    return `${base}/ws?token=${encodeURIComponent(this.token)}`;
  }

  _open() {
    if (this._closed) return;
    this._setState("connecting");
    let ws;
    try {
      ws = new this._WS(this._socketUrl());
    } catch (e) {
      this._scheduleReconnect(false);
      return;
    }
    this._ws = ws;
    let opened = false;
    ws.onopen = () => {
      if (this._ws !== ws) return;
      opened = true;
      clearTimeout(openTimer);
      this._resume(ws);
    };
    ws.onmessage = (/** @type {{ data: any }} */ m) => {
      if (this._ws !== ws) return;
      if (typeof m.data !== "string") return;
      let frame;
      try {
        frame = JSON.parse(m.data);
      } catch {
        return;
      }
      if (frame && typeof frame.type === "string") this._frame(frame);
    };
    /** @param {number} code @param {string} reason */
    const gone = (code, reason) => {
      clearTimeout(openTimer);
      if (this._ws !== ws) return;
      this._ws = null;
      try {
        ws.close();
      } catch {
        // closed already
      }
      this._closed_socket(code, reason, opened);
    };
    // Some WebSocket implementations report a failed handshake only as an
    // error, and a dead network may report nothing: neither may leave the
    // client connecting for ever.
    const openTimer = setTimeout(() => {
      if (!opened) gone(1006, "connect timeout");
    }, this._connectTimeout);
    ws.onerror = () => {
      if (!opened) gone(1006, "");
    };
    ws.onclose = (/** @type {{ code: number, reason: string }} */ ev) => gone(ev.code, ev.reason || "");
  }

  /**
   * @param {number} code
   * @param {string} reason
   * @param {boolean} opened
   */
  async _closed_socket(code, reason, opened) {
    clearTimeout(this._resetTimer);
    this._failPending(klavError("DISCONNECTED", `socket closed (${code}${reason ? " " + reason : ""})`));
    if (this._closed) return;
    if (code === 1008 && FINAL_CLOSES.has(reason)) {
      this._closed = true;
      const err = klavError(reason === "account deleted" ? "ACCOUNT_DELETED" : "SESSION_REVOKED", reason);
      for (const x of this._onlineWaiters.splice(0)) x.reject(err);
      this._setState("offline");
      return;
    }
    if (code === 1008 && reason === "token expired") {
      await this._newTokenFromProvider();
    } else if (!opened && this._tokenProvider) {
      // A refused upgrade (403) shows in a WebSocket only as a failed open:
      // ask the server whether the token is the reason before replacing it.
      if (await this._tokenRefused()) await this._newTokenFromProvider();
    }
    this._scheduleReconnect(opened);
  }

  /** Whether the server refuses the current token (`POST /ws-ticket` answers 401). */
  async _tokenRefused() {
    if (typeof fetch !== "function") return true;
    try {
      const r = await fetch(`${this.url}/ws-ticket`, {
        method: "POST",
        headers: { Authorization: `Bearer ${this.token}` },
      });
      return r.status === 401;
    } catch {
      return false;
    }
  }

  async _newTokenFromProvider() {
    if (!this._tokenProvider) return;
    try {
      const t = await this._tokenProvider();
      if (typeof t === "string" && t) {
        this.token = t;
        this._emit("token", { token: t });
      }
    } catch {
      // try again on the next failure
    }
  }

  /** @param {boolean} wasOpen */
  _scheduleReconnect(wasOpen) {
    if (this._closed) return;
    if (wasOpen && this._upSince && Date.now() - this._upSince >= this._resetAfter) this._attempt = 0;
    this._upSince = 0;
    const base = Math.min(this._maxDelay, this._minDelay * 2 ** this._attempt);
    this._attempt = Math.min(this._attempt + 1, 30);
    const delay = Math.round(base * (0.5 + Math.random()));
    this._setState("offline", delay);
    clearTimeout(this._retryTimer);
    this._retryTimer = setTimeout(() => this._open(), delay);
  }

  /** @param {any} ws */
  _resume(ws) {
    /** @type {Record<string, number>} */
    const rooms = {};
    const entries = [...this._cursors.entries()].sort((a, b) => b[1] - a[1]);
    for (const [room, id] of entries.slice(0, MAX_RESUME_ROOMS)) rooms[room] = id;
    this._transmit({ type: "resume", rooms }, ws).then(
      (ack) => {
        if (this._ws !== ws) return;
        this._upSince = Date.now();
        clearTimeout(this._resetTimer);
        this._resetTimer = setTimeout(() => {
          this._attempt = 0;
        }, this._resetAfter);
        this._setState("online");
        this._emit("resume_ack", ack);
        for (const room of this._watched) {
          this._transmit({ type: "room_members", room_id: room, watch: true }, ws).then(
            (list) => this._emit("room_members", list),
            () => {},
          );
        }
      },
      () => {
        // The socket went away (it reconnects) or the request was refused:
        // either way a fresh socket starts over.
        if (this._ws === ws) {
          try {
            ws.close(4000, "resume failed");
          } catch {
            // closing already
          }
        }
      },
    );
  }

  /** @param {any} err */
  _failPending(err) {
    const pending = [...this._pending.values()];
    this._pending.clear();
    for (const p of pending) {
      clearTimeout(p.timer);
      p.reject(err);
    }
  }

  // ---- frames ----------------------------------------------------------

  /** @param {KlavEvent} frame */
  _frame(frame) {
    // A join that makes the user a member is answered by the room's `system`
    // `joined` event, which every member gets alike (without `req_id`).
    if (frame.type === "system" && frame.event === "joined" && frame.user === this.username()) {
      for (const [rid, p] of this._pending) {
        if (p.match && p.match(frame)) {
          this._pending.delete(rid);
          clearTimeout(p.timer);
          p.resolve(frame);
          break;
        }
      }
    }
    const rid = frame.req_id;
    if (rid !== undefined && rid !== null) {
      const p = this._pending.get(String(rid));
      if (p) {
        this._pending.delete(String(rid));
        clearTimeout(p.timer);
        if (frame.type === "error") p.reject(klavError(frame.code, frame.detail, frame));
        else p.resolve(frame);
        if (EVENT_REPLIES.has(frame.type)) this._event(frame);
        return;
      }
    }
    if (frame.type === "token_expiring") this._refresh();
    this._event(frame);
  }

  /** @param {KlavEvent} ev */
  _event(ev) {
    if (ENTRY_TYPES.has(ev.type) && typeof ev.id === "number" && typeof ev.room === "string") {
      if (ev.id <= (this._cursors.get(ev.room) ?? 0)) return;
      this._cursors.set(ev.room, ev.id);
    }
    this._emit(ev.type, ev);
  }

  /** `token_expiring`: a fresh token (from the provider, else `refresh_token`), then `auth`. */
  async _refresh() {
    if (this._refreshing) return;
    this._refreshing = true;
    try {
      let token;
      if (this._tokenProvider) token = await this._tokenProvider();
      else token = (await this.request({ type: "refresh_token" })).access_token;
      if (typeof token !== "string" || !token) return;
      await this.request({ type: "auth", token });
      this.token = token;
      this._emit("token", { token });
    } catch (e) {
      this._emit("error", { type: "error", code: /** @type {any} */ (e).code ?? "REFRESH_FAILED", detail: String(e) });
    } finally {
      this._refreshing = false;
    }
  }

  // ---- requests --------------------------------------------------------

  /**
   * Writes `obj` with a fresh `req_id` on `ws`; resolves with the reply.
   * @param {Record<string, any>} obj
   * @param {any} ws
   * @param {(frame: any) => boolean} [match] another frame that answers it
   */
  _transmit(obj, ws, match) {
    return new Promise((resolve, reject) => {
      if (!ws || ws.readyState !== 1) {
        reject(klavError("DISCONNECTED", "not connected"));
        return;
      }
      const req_id = `k${this._nextReq++}`;
      const timer = setTimeout(() => {
        if (!this._pending.delete(req_id)) return;
        reject(klavError("TIMEOUT", `no reply to ${obj.type}`));
        // A socket that answers nothing is as good as gone.
        if (this._ws === ws) {
          try {
            ws.close(4000, "timeout");
          } catch {
            // closing already
          }
        }
      }, this._timeout);
      this._pending.set(req_id, { resolve, reject, timer, match });
      try {
        ws.send(JSON.stringify({ ...obj, req_id }));
      } catch (e) {
        this._pending.delete(req_id);
        clearTimeout(timer);
        reject(klavError("DISCONNECTED", String(e)));
      }
    });
  }

  /**
   * Sends `obj` with a fresh `req_id` once online; resolves with the reply,
   * rejects with an `Error` whose `code` is the server's error code (or
   * `DISCONNECTED`, `TIMEOUT`, `CLOSED` from the library).
   * @param {Record<string, any>} obj
   * @returns {Promise<any>}
   */
  async request(obj) {
    await this._whenOnline();
    return this._transmit(obj, this._ws);
  }

  /**
   * Writes a request that has no reply on success (`typing`); errors arrive as
   * `error` events.
   * @param {Record<string, any>} obj
   */
  _fire(obj) {
    if (this.state !== "online" || !this._ws || this._ws.readyState !== 1) return false;
    try {
      this._ws.send(JSON.stringify(obj));
      return true;
    } catch {
      return false;
    }
  }

  /**
   * Posts a message (or, with `to`, a DM) exactly once: the same `client_id` is
   * retried across reconnects, `RATE_LIMITED` and `UNAVAILABLE` until the server
   * answers. Resolves with the stored `message` event (or the `dm_ack`).
   * @param {string} roomId
   * @param {string} text
   * @param {{ to?: string, clientId?: string }} [options]
   */
  async send(roomId, text, options = {}) {
    const client_id = options.clientId ?? uuid();
    const obj = options.to
      ? { type: "room_dm", room_id: roomId, to: options.to, text, client_id }
      : { type: "msg", room_id: roomId, text, client_id };
    let wait = 250;
    for (;;) {
      await this._whenOnline();
      try {
        return await this._transmit(obj, this._ws);
      } catch (e) {
        const code = /** @type {any} */ (e).code;
        if (!RETRYABLE.has(code)) throw e;
        if (code === "RATE_LIMITED" || code === "UNAVAILABLE") {
          await sleep(Math.round(wait * (0.5 + Math.random())));
          wait = Math.min(wait * 2, 5000);
        } else {
          // Lets the socket's `close` event run before the next try, even with
          // a WebSocket class that reports a closing socket as open.
          await sleep(0);
        }
      }
    }
  }

  // ---- helpers ---------------------------------------------------------

  /**
   * Joins a room by id (`r_…`) or, otherwise, by name.
   * @param {string} room
   */
  async join(room) {
    const byId = /^r_[0-9a-f]{8}$/.test(room);
    const obj = byId ? { type: "join", room_id: room } : { type: "join", room };
    await this._whenOnline();
    // By name the room's id is not known yet: the first own `joined` answers.
    return this._transmit(obj, this._ws, (/** @type {any} */ f) => !byId || f.room === room);
  }
  /** @param {string} name @param {{ private?: boolean, topic?: string }} [opts] */
  createRoom(name, opts = {}) {
    return this.request({ type: "create_room", name, ...opts });
  }
  /** @param {string} roomId */
  leave(roomId) {
    return this.request({ type: "leave", room_id: roomId });
  }
  /**
   * @param {string} roomId
   * @param {{ limit?: number, before?: string, after?: string, before_id?: number, after_id?: number }} [opts]
   */
  history(roomId, opts = {}) {
    return this.request({ type: "history", room_id: roomId, ...opts });
  }
  /** @param {string} roomId */
  members(roomId) {
    return this.request({ type: "room_members", room_id: roomId });
  }
  myRooms() {
    return this.request({ type: "my_rooms" });
  }
  /** At most one is forwarded every 2 s per room; no reply. @param {string} roomId */
  typing(roomId) {
    return this._fire({ type: "typing", room_id: roomId });
  }
  /** @param {number} id @param {string} text */
  edit(id, text) {
    return this.request({ type: "edit", id, text });
  }
  /** @param {number} id */
  delete(id) {
    return this.request({ type: "delete", id });
  }
  /** @param {string} roomId @param {number} id */
  read(roomId, id) {
    return this.request({ type: "read", room_id: roomId, id });
  }
  /** @param {string} roomId */
  roomInfo(roomId) {
    return this.request({ type: "room_info", room_id: roomId });
  }
  /** @param {string} roomId @param {{ name?: string, topic?: string, private?: boolean }} changes */
  roomUpdate(roomId, changes) {
    return this.request({ type: "room_update", room_id: roomId, ...changes });
  }
  /** @param {string} roomId @param {string} user @param {"admin" | "member"} role */
  setRole(roomId, user, role) {
    return this.request({ type: "set_role", room_id: roomId, user, role });
  }
  /** @param {string} roomId @param {string} user */
  transferOwner(roomId, user) {
    return this.request({ type: "transfer_owner", room_id: roomId, user });
  }
  /** @param {string} roomId @param {string} user */
  invite(roomId, user) {
    return this.request({ type: "invite", room_id: roomId, user });
  }
  myInvites() {
    return this.request({ type: "my_invites" });
  }
  /** @param {string} roomId */
  declineInvite(roomId) {
    return this.request({ type: "decline_invite", room_id: roomId });
  }
  /** @param {string} roomId @param {string} user @param {string} [reason] */
  kick(roomId, user, reason) {
    return this.request({ type: "kick", room_id: roomId, user, ...(reason ? { reason } : {}) });
  }
  /** @param {string} roomId @param {string} user @param {string} [reason] */
  ban(roomId, user, reason) {
    return this.request({ type: "ban", room_id: roomId, user, ...(reason ? { reason } : {}) });
  }
  /** @param {string} roomId @param {string} user */
  unban(roomId, user) {
    return this.request({ type: "unban", room_id: roomId, user });
  }
  /** @param {string} roomId */
  roomBans(roomId) {
    return this.request({ type: "room_bans", room_id: roomId });
  }
  /** @param {string} user */
  block(user) {
    return this.request({ type: "block", user });
  }
  /** @param {string} user */
  unblock(user) {
    return this.request({ type: "unblock", user });
  }
  blockedList() {
    return this.request({ type: "blocked_list" });
  }
  /** The member list, and `member_presence` events on this connection. @param {string} roomId */
  watchMembers(roomId) {
    this._watched.add(roomId);
    return this.request({ type: "room_members", room_id: roomId, watch: true });
  }
  /** @param {string} roomId */
  unwatchMembers(roomId) {
    this._watched.delete(roomId);
    return this.request({ type: "room_members_unwatch", room_id: roomId });
  }
}
