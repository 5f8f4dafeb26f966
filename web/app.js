// Klav's browser client, built on klav.js (docs/protocol.md, "Writing a client"):
// accounts over HTTP, then one WebSocket that klav.js keeps open, resumes and
// dedupes. No framework and no build step; every string that came from a user
// is put on the page as text or as an attribute value, never parsed as HTML.
import { Klav } from '/klav.js';

/** Entries asked for when a room is opened or scrolled back. */
const PAGE = 50;
/** Entries asked for per catch-up request (the server's largest `limit`). */
const CATCHUP = 200;
/** The server's longest message, in characters. */
const MAX_TEXT = 4000;
/** How long "X is typing…" shows without a new `typing` event. */
const TYPING_SHOW_MS = 5000;
/** The server forwards one `typing` per user and room every 2 s; send no more. */
const TYPING_EVERY_MS = 2000;
/** Read markers sent at most this often. */
const READ_EVERY_MS = 1000;
const SESSION_KEY = 'klav.session';
const OPEN_KEY = 'klav.open.';
const MINPW_KEY = 'klav.minPassword';

const ERRORS = {
  NOT_A_MEMBER: 'You are not a member of this room.',
  TEXT_TOO_LONG: `Message too long: ${MAX_TEXT} characters at most.`,
  TEXT_REQUIRED: 'Type a message first.',
  RATE_LIMITED: 'Too many requests: wait a moment and try again.',
  UNAVAILABLE: 'The server could not store that right now. Try again.',
  ROOM_NOT_FOUND: 'No such room.',
  ROOM_ID_OR_NAME_REQUIRED: 'Type a room name.',
  ROOM_ID_AND_TO_REQUIRED: 'Type whom the direct message is for.',
  BAD_REQUEST: 'The server did not understand that request.',
  NOT_ALLOWED: 'Your role in this room does not allow that.',
  BANNED: 'You are banned from this room.',
  USER_NOT_FOUND: 'There is no user with that name.',
  MESSAGE_NOT_FOUND: 'That message is no longer there.',
  NOT_AUTHOR: 'Only the author can change that message.',
  TOO_MANY_ROOMS: 'You are in too many rooms: leave one first.',
  DISCONNECTED: 'The connection dropped before the server answered: try again.',
  TIMEOUT: 'The server did not answer in time: try again.',
  CLOSED: 'Not connected.',
};

const el = (id) => document.getElementById(id);
const ui = {};
for (const id of [
  'login-view', 'login-form', 'login-username', 'login-password', 'login-nickname', 'auth-error',
  'login-submit', 'register-submit', 'password-hint', 'chat-view', 'menu-toggle', 'connection-status',
  'me', 'logout', 'settings-open', 'join-form', 'room-name', 'room-private', 'room-error', 'room-list',
  'invites-box', 'invites-list', 'friend-form', 'friend-name', 'friend-error', 'online-friends',
  'following', 'offline-box', 'offline-dms', 'room-view', 'room-title', 'room-topic', 'room-hint',
  'room-leave', 'members-toggle', 'load-older', 'message-list', 'typing-indicator', 'composer',
  'send-error', 'dm-to', 'message-input', 'members-panel', 'members-list', 'members-note',
  'invite-form', 'invite-user', 'invite-note', 'members-close', 'settings-view', 'settings-close', 'password-form',
  'password-current', 'password-new', 'password-new-hint', 'settings-note', 'notify-enable',
  'blocked-list', 'logout-all', 'account-erase', 'account-delete',
]) {
  ui[id.replace(/-(\w)/g, (_, c) => c.toUpperCase())] = el(id);
}

/** Everything the page knows about the session; replaced on every login. */
let s = freshState();

function freshState() {
  return {
    token: null,
    user: null,
    klav: null,
    /** room id → room (see `roomRecord`). */
    rooms: new Map(),
    open: null,
    /** Room to open once `my_rooms` lists it. */
    openWhenListed: null,
    /** Remembered open room, opened once the first `my_rooms` lists it. */
    restore: null,
    roomsLoading: false,
    roomsAgain: false,
    /** username → nickname, learned from every entry and member list. */
    nicks: new Map(),
    online: new Map(),
    /** Members of the open room: username → {username, nickname, online, role}. */
    members: new Map(),
    membersOf: null,
    invites: new Map(),
    blocked: new Map(),
    /** room id → Map(username → {nick, until}). */
    typing: new Map(),
    typingSentAt: 0,
    typingTimer: null,
    /** client_id → {room, li} of sends the server has not stored yet. */
    pending: new Map(),
    offline: [],
    editing: null,
    refreshTimer: null,
    /** The `POST /password` in flight: its answer (or null) decides a revoked socket's fate. */
    passwordChange: null,
  };
}

function roomRecord(id, name) {
  return {
    id,
    name,
    topic: null,
    role: null,
    private: false,
    last: null,
    lastId: 0,
    readId: 0,
    unread: 0,
    unreadMore: false,
    /** Ids of unread messages that arrived live (see `onMyRooms`). */
    unreadIds: new Set(),
    entries: new Map(),
    state: 'new',
    oldestReached: false,
    loadingOlder: false,
    readAt: 0,
    readTimer: null,
  };
}

function nickOf(user) {
  return s.nicks.get(user) || user;
}

function learnNick(user, nick) {
  if (user && nick && user !== 'system' && nick !== '(deleted)') s.nicks.set(user, nick);
}

function errText(e) {
  const code = e && e.code;
  return ERRORS[code] || (e && e.reply && e.reply.detail) || code || String(e);
}

function store(key, value) {
  try {
    if (value === null) localStorage.removeItem(key);
    else localStorage.setItem(key, value);
  } catch (_) {
    // Storage may be disabled; the page then forgets on reload.
  }
}

function load(key) {
  try {
    return localStorage.getItem(key);
  } catch (_) {
    return null;
  }
}

/** A fresh client_id; `crypto.randomUUID` needs a secure context, random bytes do not. */
function uuid() {
  const b = crypto.getRandomValues(new Uint8Array(16));
  return Array.from(b, (x) => x.toString(16).padStart(2, '0')).join('');
}

/** Runs `action` on the second click within 4 s; the first asks "sure?". */
function confirmClick(btn, label, action) {
  btn.addEventListener('click', () => {
    if (btn.dataset.confirm === 'true') {
      btn.dataset.confirm = '';
      btn.textContent = label;
      action();
      return;
    }
    btn.dataset.confirm = 'true';
    btn.textContent = `${label}?`;
    setTimeout(() => {
      btn.dataset.confirm = '';
      btn.textContent = label;
    }, 4000);
  });
}

// ---------------------------------------------------------------- accounts

async function postJson(path, body, token) {
  const headers = { 'Content-Type': 'application/json' };
  if (token) headers.Authorization = `Bearer ${token}`;
  const r = await fetch(path, { method: 'POST', headers, body: JSON.stringify(body) });
  let data = {};
  try {
    data = await r.json();
  } catch (_) {
    // A body that is not JSON: the status alone tells what happened.
  }
  return { status: r.status, data, retryAfter: r.headers.get('Retry-After') };
}

function httpFailure(r) {
  const detail = r.data && typeof r.data.detail === 'string' ? r.data.detail : '';
  if (r.status === 429) {
    const secs = Number.parseInt(r.retryAfter || '', 10);
    const wait = Number.isFinite(secs) ? formatWait(secs) : 'a few minutes';
    return `Too many failed logins. Try again in ${wait}.`;
  }
  if (r.status === 401) {
    if (detail === 'not registered') return 'No account with that username: register first.';
    if (detail === 'invalid credentials') return 'Wrong username or password.';
    return 'Wrong username or password.';
  }
  if (r.status === 503) return 'The server is unavailable right now. Try again shortly.';
  const min = /at least (\d+) characters/.exec(detail);
  if (min) {
    store(MINPW_KEY, min[1]);
    showMinPassword();
  }
  return detail ? `${detail[0].toUpperCase()}${detail.slice(1)}.` : `Request failed (HTTP ${r.status}).`;
}

function formatWait(secs) {
  return secs < 90 ? `${secs} s` : `${Math.ceil(secs / 60)} min`;
}

/** The server's minimum password length: 8 unless a refusal said otherwise. */
function showMinPassword() {
  const n = Number(load(MINPW_KEY)) || 8;
  ui.passwordHint.textContent = `At least ${n} characters when registering.`;
  ui.passwordNewHint.textContent = `At least ${n} characters.`;
}

async function authenticate(register) {
  const username = ui.loginUsername.value.trim();
  const password = ui.loginPassword.value;
  const nickname = ui.loginNickname.value.trim();
  if (!username || !password) {
    showAuthError('Type a username and a password.');
    return;
  }
  showAuthError('');
  ui.loginSubmit.disabled = ui.registerSubmit.disabled = true;
  try {
    if (register) {
      const body = { username, password };
      if (nickname) body.nickname = nickname;
      const r = await postJson('/register', body);
      if (r.status !== 200) return showAuthError(httpFailure(r));
      if (r.data.status === 'ALREADY') {
        return showAuthError('That username is taken: log in, or pick another one.');
      }
    }
    const r = await postJson('/login', { username, password });
    if (r.status !== 200) return showAuthError(httpFailure(r));
    ui.loginPassword.value = '';
    startSession(r.data.access_token, username);
  } catch (_) {
    showAuthError('Cannot reach the server.');
  } finally {
    ui.loginSubmit.disabled = ui.registerSubmit.disabled = false;
  }
  return undefined;
}

function showAuthError(text) {
  ui.authError.textContent = text;
}

/** The token's `exp` in milliseconds (0 when it cannot be read). */
function tokenExpiry(token) {
  try {
    const part = token.split('.')[1].replace(/-/g, '+').replace(/_/g, '/');
    const claims = JSON.parse(atob(part));
    return typeof claims.exp === 'number' ? claims.exp * 1000 : 0;
  } catch (_) {
    return 0;
  }
}

function saveSession() {
  store(SESSION_KEY, JSON.stringify({ token: s.token, user: s.user }));
  scheduleRefresh();
}

/** A fresh token two minutes before this one expires (`refresh_token`, then
 * `auth` on the open socket), so a page left open stays logged in up to the
 * server's longest session. */
function scheduleRefresh() {
  clearTimeout(s.refreshTimer);
  const session = s;
  const wait = tokenExpiry(s.token) - Date.now() - 120000;
  s.refreshTimer = setTimeout(async () => {
    if (session !== s || !s.klav) return;
    try {
      const t = await s.klav.request({ type: 'refresh_token' });
      await s.klav.request({ type: 'auth', token: t.access_token });
      if (session !== s) return;
      s.token = s.klav.token = t.access_token;
      saveSession();
    } catch (_) {
      // Offline, or refused ("log in again"): the next connection says so.
      if (session === s) s.refreshTimer = setTimeout(scheduleRefresh, 60000);
    }
  }, Math.max(5000, Math.min(wait, 2 ** 31 - 1)));
}

function startSession(token, user) {
  if (s.klav) s.klav.close();
  s = freshState();
  s.token = token;
  s.user = user;
  try {
    s.nicks = new Map(JSON.parse(load('klav.nicks') || '[]'));
  } catch (_) {
    s.nicks = new Map();
  }
  s.restore = load(OPEN_KEY + user);
  saveSession();
  ui.me.textContent = user;
  ui.loginView.hidden = true;
  ui.chatView.hidden = false;
  clearChat();
  // After a keyboard login the focus goes on into the page, not to the body.
  ui.roomName.focus();
  const klav = new Klav({ url: location.origin, token, WebSocket: TicketSocket });
  s.klav = klav;
  wire(klav);
  klav.connect().catch(() => {
    // Refused for good (revoked, deleted): the socket's close says why.
  });
}

/** Back to the login form, with `message` shown there. `forget`: the kept session
 * goes too (logging out); otherwise only if it is this page's (another tab may
 * already carry a newer login). */
function endSession(message, forget = false) {
  const old = s;
  if (old.klav) old.klav.close();
  clearTimeout(old.refreshTimer);
  try {
    const saved = JSON.parse(load(SESSION_KEY) || 'null');
    if (forget || !saved || !old.token || saved.token === old.token) store(SESSION_KEY, null);
  } catch (_) {
    store(SESSION_KEY, null);
  }
  s = freshState();
  clearChat();
  ui.chatView.hidden = true;
  ui.loginView.hidden = false;
  showAuthError(message || '');
  ui.loginUsername.focus();
}

function clearChat() {
  for (const list of [ui.roomList, ui.onlineFriends, ui.following, ui.offlineDms, ui.invitesList, ui.blockedList]) {
    list.replaceChildren();
  }
  ui.offlineBox.hidden = true;
  ui.invitesBox.hidden = true;
  ui.settingsView.hidden = true;
  for (const n of [ui.friendError, ui.roomError, ui.settingsNote]) n.textContent = '';
  showRoom(null);
}

// -------------------------------------------------------------- connection

/**
 * A WebSocket for klav.js that never puts the token into a URL (where proxies
 * log it): each connection first asks `POST /ws-ticket` for a one-time ticket
 * and opens `/ws?ticket=…`. It also sees what a WebSocket alone cannot show: a
 * token the server refuses (401 on the ticket) and why a session was closed.
 */
class TicketSocket {
  constructor(url) {
    /** Ours until the socket opens, then the socket's own (CLOSING as soon as the server closes). */
    this.state = 0;
    this.onopen = this.onmessage = this.onerror = this.onclose = null;
    this.ws = null;
    this.done = false;
    this.session = s;
    this.start(new URL(url).searchParams.get('token') || '');
  }

  async start(token) {
    // Never fail inside the constructor: klav.js sets its handlers after it.
    await Promise.resolve();
    if (Date.now() >= tokenExpiry(token)) {
      this.fail();
      if (this.session === s) endSession('Your session has expired: please log in again.');
      return;
    }
    let ticket = null;
    try {
      const r = await fetch('/ws-ticket', {
        method: 'POST',
        headers: { Authorization: `Bearer ${token}` },
        cache: 'no-store',
      });
      if (r.status === 401) ticket = 'refused';
      else if (r.ok) ticket = (await r.json()).ticket;
    } catch (_) {
      ticket = null;
    }
    if (this.done) return;
    if (typeof ticket !== 'string' || ticket === 'refused') {
      this.fail();
      if (ticket === 'refused' && this.session === s && token === s.token) {
        endSession('The server no longer accepts this session: please log in again.');
      }
      return;
    }
    const scheme = location.protocol === 'https:' ? 'wss:' : 'ws:';
    const ws = new WebSocket(`${scheme}//${location.host}/ws?ticket=${encodeURIComponent(ticket)}`);
    this.ws = ws;
    ws.onopen = () => {
      this.state = 1;
      if (this.onopen) this.onopen({});
    };
    ws.onmessage = (m) => {
      if (typeof m.data === 'string' && m.data.includes('"RATE_LIMITED"')) rateLimited(m.data);
      if (this.onmessage) this.onmessage(m);
    };
    ws.onerror = () => {
      if (this.onerror) this.onerror({});
    };
    ws.onclose = (ev) => {
      this.state = 3;
      if (this.session === s) socketClosed(ev.code, ev.reason, token);
      if (this.onclose) this.onclose({ code: ev.code, reason: ev.reason });
    };
  }

  get readyState() {
    return this.ws && this.state === 1 ? this.ws.readyState : this.state;
  }

  fail() {
    this.state = 3;
    if (this.onerror) this.onerror({});
    if (this.onclose) this.onclose({ code: 1006, reason: '' });
  }

  send(data) {
    if (this.readyState !== 1) throw new Error('not open');
    this.ws.send(data);
  }

  close(code, reason) {
    this.done = true;
    if (this.state !== 3) this.state = 2;
    if (this.ws) {
      try {
        this.ws.close(code, reason);
      } catch (_) {
        // closing already
      }
    }
  }
}

/** klav.js waits out `RATE_LIMITED` on sends; the person should know why it is slow. */
function rateLimited(data) {
  try {
    const f = JSON.parse(data);
    if (f.type === 'error' && f.code === 'RATE_LIMITED' && s.open && s.pending.size > 0) {
      composerNote('Too many requests: your messages wait a moment and then go out by themselves.', true);
    }
  } catch (_) {
    // not JSON: klav.js ignores it too
  }
}

function socketClosed(code, reason, token) {
  if (code !== 1008) return;
  const session = s;
  const end = (why) =>
    setTimeout(() => {
      if (session === s) endSession(why);
    }, 0);
  const loggedOut = 'You were logged out everywhere (password changed or "log out everywhere"): please log in again.';
  const reconnect = () =>
    setTimeout(() => {
      if (session === s) s.klav.connect().catch(() => {});
    }, 0);
  if (reason === 'session revoked' && token !== s.token) {
    // This page changed the password: the old socket goes, the new token stays.
    reconnect();
  } else if (reason === 'session revoked' && s.passwordChange) {
    // The close may come before the answer that carries the new token.
    s.passwordChange.then((data) => (data ? reconnect() : end(loggedOut)));
  } else if (reason === 'session revoked') {
    end(loggedOut);
  } else if (reason === 'account deleted') {
    end('Your account was deleted.');
  } else if (reason === 'token expired') {
    end('Your session has expired: please log in again.');
  }
}

function setStatus(kind, text) {
  ui.connectionStatus.textContent = text;
  ui.connectionStatus.dataset.state = kind;
}

/** A line under the composer: an error, or (`info`) a plain note. */
function composerNote(text, info = false) {
  ui.sendError.textContent = text;
  ui.sendError.classList.toggle('info', info);
}

function wire(klav) {
  klav.on('state', (ev) => {
    if (ev.state === 'online') setStatus('online', 'online');
    else if (ev.state === 'connecting') setStatus('connecting', 'connecting…');
    else if (ev.retryInMs !== undefined) {
      setStatus('offline', `offline — retrying in ${Math.max(1, Math.round(ev.retryInMs / 1000))} s`);
    } else setStatus('offline', 'offline');
  });
  klav.on('resume_ack', onConnected);
  klav.on('token', (ev) => {
    s.token = ev.token;
    saveSession();
  });
  for (const type of [
    'message', 'dm', 'system', 'room_updated', 'message_edited', 'message_deleted', 'typing',
    'read_marker', 'member_presence', 'role_changed', 'invited', 'offline_dm', 'offline_dm_dropped',
    'presence_change', 'notify_followed', 'room_members',
  ]) {
    klav.on(type, (ev) => {
      if (s.klav === klav) dispatch(ev);
    });
  }
}

/** A read that may be refused for a while (`RATE_LIMITED`, `UNAVAILABLE`): asked
 * again after a growing pause, a few times. `make` returns the klav.js promise. */
function patiently(make, tries = 6, wait = 1000) {
  const session = s;
  return make().catch((e) => {
    if (session !== s || tries <= 1 || (e.code !== 'RATE_LIMITED' && e.code !== 'UNAVAILABLE')) throw e;
    return new Promise((r) => setTimeout(r, wait)).then(() => {
      if (session !== s) throw e;
      return patiently(make, tries - 1, Math.min(wait * 2, 8000));
    });
  });
}

/** Runs `req` (a klav.js promise); its reply goes through `dispatch`, its failure to `fail`. */
function ask(req, fail) {
  const session = s;
  return req.then(
    (reply) => {
      if (session === s && reply) dispatch(reply);
      return reply;
    },
    (e) => {
      if (session === s && fail) fail(e);
      return null;
    },
  );
}

/** Online (first time, or again after a reconnect and its `resume`). */
function onConnected() {
  const k = s.klav;
  refreshRooms();
  ask(patiently(() => k.request({ type: 'presence_friends_subscribe' })));
  ask(patiently(() => k.request({ type: 'following_list' })));
  ask(patiently(() => k.myInvites()));
  ask(patiently(() => k.blockedList()));
  for (const room of s.rooms.values()) {
    // Rooms the resume did not cover (loaded from history only) catch up here;
    // entries are kept by id, so nothing shows twice.
    if (room.state === 'ready') catchUp(room);
    else if (room.state === 'loading') room.state = 'new';
  }
  const open = s.open && s.rooms.get(s.open);
  if (open) {
    loadInitial(open);
    watchOpenRoom();
  }
}

// ------------------------------------------------------------------ events

function dispatch(ev) {
  switch (ev.type) {
    case 'my_rooms':
      return onMyRooms(ev);
    case 'message':
      return onEntries(ev.room, [{ ...ev, kind: 'msg' }], true);
    case 'dm':
      return onEntries(ev.room, [{ ...ev, kind: 'dm' }], true);
    case 'system':
      return onSystem(ev);
    case 'room_updated':
      return onRoomUpdated(ev);
    case 'message_edited':
    case 'message_deleted':
      return onChanged(ev);
    case 'typing':
      return onTyping(ev);
    case 'read_marker':
      return onReadMarker(ev);
    case 'room_members':
      return onMembers(ev);
    case 'member_presence':
      return onMemberPresence(ev);
    case 'role_changed':
      return onRoleChanged(ev);
    case 'room_info':
      return onRoomInfo(ev);
    case 'invites':
      s.invites = new Map((ev.invites || []).map((i) => [i.room, i]));
      return renderInvites();
    case 'invited':
      s.invites.set(ev.room, ev);
      learnNick(ev.by, ev.by_nickname);
      renderInvites();
      return notify(`${ev.by_nickname || ev.by} invited you to ${ev.name}`, '', ev.room);
    case 'blocked_list':
      s.blocked = new Map((ev.blocked || []).map((b) => [b.username, b.nickname]));
      return renderBlocked();
    case 'offline_dm':
      return onOfflineDm(ev);
    case 'offline_dm_dropped':
      ui.friendError.textContent = `${ev.count} direct messages sent while you were away were dropped (queue full).`;
      return undefined;
    case 'online_friends':
      s.online = new Map(ev.users.map((u) => [u.username, u.nickname || u.name || u.username]));
      return renderOnline();
    case 'presence_change':
      if (ev.status === 'online') s.online.set(ev.user, ev.name || ev.user);
      else s.online.delete(ev.user);
      return renderOnline();
    case 'following_list':
      return renderFollowing(ev.following || []);
    case 'friend_follow_ack':
    case 'friend_unfollow_ack':
      return onFollowAck(ev);
    case 'notify_followed':
      ui.friendError.textContent = `${ev.from} now follows you.`;
      return undefined;
    default:
      return undefined;
  }
}

/** Asks for `my_rooms`; one request at a time, once more if asked meanwhile. */
function refreshRooms() {
  if (s.roomsLoading) {
    s.roomsAgain = true;
    return;
  }
  s.roomsLoading = true;
  const session = s;
  ask(patiently(() => s.klav.myRooms()), () => {}).finally(() => {
    if (session !== s) return;
    s.roomsLoading = false;
    if (s.roomsAgain) {
      s.roomsAgain = false;
      refreshRooms();
    }
  });
}

function onMyRooms(ev) {
  const listed = new Set();
  for (const info of ev.rooms_info || []) {
    listed.add(info.id);
    let room = s.rooms.get(info.id);
    if (!room) {
      room = roomRecord(info.id, info.name);
      s.rooms.set(info.id, room);
    }
    room.name = info.name;
    room.role = info.role || null;
    room.private = !!info.private;
    const last = info.last;
    if (last && (!room.lastId || !last.id || last.id >= room.lastId)) {
      room.last = last;
      room.lastId = last.id || room.lastId;
    }
    room.readId = Math.max(room.readId, info.read_id || 0);
    // Messages that arrived live after the server counted are added to its count.
    const counted = last && last.id ? last.id : 0;
    for (const id of room.unreadIds) if (id <= counted || id <= room.readId) room.unreadIds.delete(id);
    // A marker this page sent may not have been stored when the server counted.
    const stale = counted > 0 && room.readId >= counted && (info.read_id || 0) < room.readId;
    const countedUnread = stale ? 0 : info.unread || 0;
    room.unread = s.open === room.id && pageVisible() ? 0 : countedUnread + room.unreadIds.size;
    room.unreadMore = !!info.unread_more;
  }
  for (const id of [...s.rooms.keys()]) if (!listed.has(id)) s.rooms.delete(id);
  if (s.open && !s.rooms.has(s.open)) showRoom(null);
  const want = s.openWhenListed || (!s.open && s.restore);
  if (want && s.rooms.has(want)) {
    s.openWhenListed = null;
    s.restore = null;
    openRoom(want);
  } else if (s.restore && !s.open) {
    s.restore = null;
  }
  renderRooms();
  renderOffline();
  if (s.open) renderHead();
}

function onSystem(ev) {
  const room = s.rooms.get(ev.room);
  const mine = ev.user === s.user;
  learnNick(ev.user, ev.user_nickname);
  if (ev.event === 'joined' && mine && s.invites.delete(ev.room)) renderInvites();
  if (ev.event === 'joined' && mine && !room) {
    refreshRooms();
    return;
  }
  if ((ev.event === 'left' || ev.event === 'kicked' || ev.event === 'banned') && mine) {
    if (ev.event !== 'left' && room) {
      const how = ev.event === 'kicked' ? 'removed' : 'banned';
      ui.roomError.textContent = `You were ${how} from ${room.name} by ${nickOf(ev.by)}.`;
    }
    onLeft(ev.room);
    return;
  }
  if (!room) return;
  if (ev.event === 'joined') {
    if (s.membersOf === ev.room) {
      s.members.set(ev.user, { username: ev.user, nickname: ev.user_nickname || ev.user, online: true, role: 'member' });
      renderMembers();
    }
    // Back in a room this page kept: what happened while out comes from history.
    if (mine && room.state === 'ready') catchUp(room);
  } else if (s.membersOf === ev.room && ['left', 'kicked', 'banned'].includes(ev.event)) {
    s.members.delete(ev.user);
    renderMembers();
  }
  if (typeof ev.id === 'number') {
    onEntries(ev.room, [{ ...ev, kind: 'system', from: 'system', text: systemText(ev) }], true);
  }
}

/** A live system event as the server words its log entry (names.rs). */
function systemText(ev) {
  const nick = ev.user_nickname || ev.user;
  switch (ev.event) {
    case 'joined':
      return `${nick} 님이 입장하셨습니다`;
    case 'left':
      return `${nick} 님이 나가셨습니다`;
    case 'kicked':
      return `${nick} 님이 ${nickOf(ev.by)} 님에 의해 내보내졌습니다`;
    case 'banned':
      return `${nick} 님이 ${nickOf(ev.by)} 님에 의해 차단되었습니다`;
    default:
      return ev.text || `${nick} ${ev.event}`;
  }
}

function onLeft(roomId) {
  s.rooms.delete(roomId);
  s.typing.delete(roomId);
  if (s.open === roomId) showRoom(null);
  renderRooms();
}

function onRoomUpdated(ev) {
  const room = s.rooms.get(ev.room);
  if (!room) return;
  room.name = ev.name;
  room.topic = ev.topic;
  room.private = !!ev.private;
  if (s.open === room.id) renderHead();
  renderRooms();
  if (typeof ev.id === 'number') {
    const text = `${nickOf(ev.by)} 님이 대화방 정보를 바꾸었습니다`;
    onEntries(ev.room, [{ id: ev.id, ts: ev.ts, room: ev.room, kind: 'system', from: 'system', text }], true);
  }
}

function onRoomInfo(ev) {
  const room = s.rooms.get(ev.room);
  if (!room) return;
  const before = room.role;
  room.name = ev.name;
  room.topic = ev.topic;
  room.role = ev.role || null;
  room.private = !!ev.private;
  if (s.open === room.id) {
    renderHead();
    renderMembers();
    if (before !== room.role) rerenderMessages(room);
  }
}

function onRoleChanged(ev) {
  const room = s.rooms.get(ev.room);
  if (!room) return;
  if (ev.user === s.user) room.role = ev.role;
  const m = s.membersOf === ev.room && s.members.get(ev.user);
  if (m) m.role = ev.role;
  if (s.open === ev.room) {
    renderMembers();
    rerenderMessages(room);
  }
}

function onReadMarker(ev) {
  const room = s.rooms.get(ev.room);
  if (!room) return;
  room.readId = Math.max(room.readId, ev.id);
  for (const id of room.unreadIds) if (id <= ev.id) room.unreadIds.delete(id);
  if (ev.id >= room.lastId) {
    room.unread = 0;
    room.unreadMore = false;
    renderRooms();
  } else {
    refreshRooms();
  }
}

function onFollowAck(ev) {
  const messages = {
    FOLLOWED: `You follow ${ev.to}.`,
    ALREADY: `You already follow ${ev.to}.`,
    SELF: 'You cannot follow yourself.',
    NOT_REGISTERED: `There is no user ${ev.to}.`,
    BLOCKED: `You cannot follow ${ev.to}.`,
    UNFOLLOWED: `You no longer follow ${ev.to}.`,
    NOT_FOLLOWING: `You did not follow ${ev.to}.`,
  };
  ui.friendError.textContent = messages[ev.status] || ev.status;
  ask(s.klav.request({ type: 'following_list' }));
  ask(s.klav.request({ type: 'get_online_friends' }));
}

// ----------------------------------------------------------------- history

function newestId(room) {
  let max = 0;
  for (const id of room.entries.keys()) if (id > max) max = id;
  return max;
}

function oldestId(room) {
  let min = Infinity;
  for (const id of room.entries.keys()) if (id < min) min = id;
  return min === Infinity ? 0 : min;
}

function loadInitial(room) {
  if (room.state !== 'new' || !s.klav || s.klav.state !== 'online') return;
  room.state = 'loading';
  const session = s;
  patiently(() => s.klav.history(room.id, { limit: PAGE })).then(
    (ev) => {
      if (session !== s) return;
      room.state = 'ready';
      if (ev.items.length < PAGE) room.oldestReached = true;
      onEntries(room.id, ev.items, false);
      if (s.open === room.id) {
        scrollToEnd();
        markRead(room);
      }
      updateOlderButton();
    },
    (e) => {
      if (session !== s) return;
      room.state = 'new';
      if (s.open === room.id) composerNote(errText(e));
    },
  );
}

function loadOlder(room) {
  if (room.state !== 'ready' || room.oldestReached || room.loadingOlder) return;
  const before = oldestId(room);
  if (!before) return;
  room.loadingOlder = true;
  const session = s;
  s.klav.history(room.id, { limit: PAGE, before_id: before }).then(
    (ev) => {
      if (session !== s) return;
      room.loadingOlder = false;
      if (ev.items.length < PAGE) room.oldestReached = true;
      const list = ui.messageList;
      const fromBottom = list.scrollHeight - list.scrollTop;
      onEntries(room.id, ev.items, false);
      if (s.open === room.id) list.scrollTop = list.scrollHeight - fromBottom;
      updateOlderButton();
    },
    () => {
      room.loadingOlder = false;
    },
  );
}

/** Everything after `after`; a full page may leave a gap, filled from its oldest entry down. */
function catchUp(room, after = newestId(room), before = undefined) {
  const opts = { limit: CATCHUP, after_id: after };
  if (before !== undefined) opts.before_id = before;
  const session = s;
  patiently(() => s.klav.history(room.id, opts)).then(
    (ev) => {
      if (session !== s) return;
      onEntries(room.id, ev.items, s.open !== room.id);
      if (ev.items.length === CATCHUP && ev.items[0].id > after + 1) catchUp(room, after, ev.items[0].id);
      if (s.open === room.id) markRead(room);
    },
    () => {},
  );
}

/** Tells the server (and so this user's other tabs) that the open room is read. */
function markRead(room) {
  if (s.open !== room.id || !pageVisible()) return;
  room.unread = 0;
  room.unreadMore = false;
  room.unreadIds.clear();
  sendRead(room);
  renderRooms();
}

/** `read` for the newest entry, at most once a second per room (a busy room
 * would otherwise spend the request budget on markers). */
function sendRead(room) {
  const wait = room.readAt + READ_EVERY_MS - Date.now();
  if (wait > 0) {
    clearTimeout(room.readTimer);
    room.readTimer = setTimeout(() => {
      if (s.rooms.get(room.id) === room) sendRead(room);
    }, wait);
    return;
  }
  const newest = newestId(room);
  if (newest > room.readId && s.klav.state === 'online') {
    room.readId = newest;
    room.readAt = Date.now();
    s.klav.read(room.id, newest).catch(() => {
      // Gone meanwhile (deleted, left): the next my_rooms settles the count.
    });
  }
}

function pageVisible() {
  return document.visibilityState === 'visible';
}

// ----------------------------------------------------------------- entries

/** Entries of a room (kept by id, so none twice); `live` ones may be unread or notify. */
function onEntries(roomId, items, live) {
  const room = s.rooms.get(roomId);
  if (!room) {
    if (live) refreshRooms();
    return;
  }
  const keep = room.state === 'ready' || room.state === 'loading';
  const isOpen = s.open === roomId;
  const list = ui.messageList;
  const nearEnd = list.scrollHeight - list.scrollTop - list.clientHeight < 80;
  const newestBefore = newestId(room);
  let newer = false;
  let changed = false;
  for (const item of items) {
    if (typeof item.id !== 'number') continue;
    learnNick(item.from, item.from_nickname);
    const had = room.entries.get(item.id);
    if (had) {
      // A replay shows an entry as it now stands (edited or deleted meanwhile).
      if ((item.deleted && !had.deleted) || (item.edited_at && item.edited_at !== had.edited_at)) {
        Object.assign(had, { text: item.text, deleted: item.deleted, edited_at: item.edited_at });
        if (isOpen) replaceMessage(had);
      }
      continue;
    }
    const pend = item.client_id && s.pending.get(item.client_id);
    if (pend && item.from === s.user) {
      pend.li.remove();
      s.pending.delete(item.client_id);
    }
    if (item.kind !== 'dm' && item.id > room.lastId) {
      room.last = { id: item.id, kind: item.kind, from: item.from, text: item.text, ts: item.ts, deleted: item.deleted };
      room.lastId = item.id;
      changed = true;
    }
    if (live) {
      if (s.typing.get(roomId)?.delete(item.from)) renderTyping();
      if (item.kind !== 'system' && item.from !== s.user) {
        if (item.kind === 'msg' && !(isOpen && pageVisible()) && item.id > room.readId) {
          room.unread += 1;
          room.unreadIds.add(item.id);
          changed = true;
        }
        maybeNotify(room, item);
      }
    }
    if (keep) {
      room.entries.set(item.id, item);
      if (isOpen) insertMessage(item);
      if (item.id > newestBefore) newer = true;
    }
  }
  if (isOpen && newer) {
    markSeparators();
    // Follow the conversation when the reader is at its end; never when older
    // entries come in above.
    if (nearEnd) scrollToEnd();
    if (live) markRead(room);
  } else if (isOpen && keep) {
    markSeparators();
  }
  if (changed) renderRooms();
}

function onChanged(ev) {
  const room = s.rooms.get(ev.room);
  if (!room) return;
  const item = room.entries.get(ev.id);
  if (ev.type === 'message_deleted') {
    if (room.unreadIds.delete(ev.id)) room.unread = Math.max(0, room.unread - 1);
    if (room.last && room.last.id === ev.id) room.last = { ...room.last, text: '', deleted: true };
    if (item) Object.assign(item, { text: '', deleted: true, deleted_by: ev.by });
    if (s.editing === ev.id) s.editing = null;
  } else {
    if (room.last && room.last.id === ev.id) room.last = { ...room.last, text: ev.text };
    if (item) Object.assign(item, { text: ev.text, edited_at: ev.edited_at });
  }
  if (item && s.open === room.id && s.editing !== ev.id) replaceMessage(item);
  renderRooms();
}

function insertMessage(item) {
  const node = messageElement(item);
  const list = ui.messageList;
  let after = list.lastElementChild;
  while (after && (after.dataset.pending === 'true' || !after.dataset.id || Number(after.dataset.id) > item.id)) {
    after = after.previousElementSibling;
  }
  if (after) after.after(node);
  else list.prepend(node);
}

function replaceMessage(item) {
  const old = ui.messageList.querySelector(`[data-testid="message"][data-id="${item.id}"]`);
  if (old) old.replaceWith(messageElement(item));
}

function rerenderMessages(room) {
  for (const item of room.entries.values()) if (item.kind !== 'system' && s.editing !== item.id) replaceMessage(item);
}

/** Date separators between entries of different days (rebuilt; entries stay). */
function markSeparators() {
  const list = ui.messageList;
  for (const sep of list.querySelectorAll('.day')) sep.remove();
  let day = null;
  for (const li of [...list.children]) {
    const d = li.dataset.day;
    if (d && d !== day) {
      const sep = document.createElement('li');
      sep.className = 'day';
      sep.dataset.testid = 'date-separator';
      sep.setAttribute('role', 'separator');
      sep.textContent = dayLabel(new Date(Number(li.dataset.dayTs)));
      li.before(sep);
      day = d;
    }
  }
}

function dayLabel(d) {
  const today = new Date();
  const yesterday = new Date(today.getFullYear(), today.getMonth(), today.getDate() - 1);
  if (d.toDateString() === today.toDateString()) return 'Today';
  if (d.toDateString() === yesterday.toDateString()) return 'Yesterday';
  return d.toLocaleDateString([], { weekday: 'long', year: 'numeric', month: 'long', day: 'numeric' });
}

function canModerate() {
  const room = s.open && s.rooms.get(s.open);
  return !!room && (room.role === 'owner' || room.role === 'admin');
}

function messageElement(item) {
  const li = document.createElement('li');
  li.dataset.testid = 'message';
  if (item.pending) li.dataset.pending = 'true';
  else li.dataset.id = String(item.id);
  li.dataset.from = item.from;
  li.dataset.kind = item.kind;
  if (item.edited_at && !item.deleted) li.dataset.edited = 'true';
  if (item.deleted) li.dataset.deleted = 'true';
  const d = item.ts ? parseTs(item.ts) : new Date();
  if (!Number.isNaN(d.getTime())) {
    li.dataset.day = d.toDateString();
    li.dataset.dayTs = String(d.getTime());
  }
  li.className = `msg kind-${item.kind}`;
  const mine = item.kind !== 'system' && item.from === s.user;
  if (mine) li.classList.add('mine');
  if (item.kind === 'system') {
    const text = document.createElement('span');
    text.className = 'text';
    text.textContent = item.text;
    li.append(text, ' ', timeElement(d));
    return li;
  }
  const meta = document.createElement('div');
  meta.className = 'meta';
  const who = document.createElement('strong');
  who.textContent = item.from_nickname || nickOf(item.from);
  who.title = item.from;
  meta.append(who);
  if (item.kind === 'dm') {
    const tag = document.createElement('span');
    tag.className = 'dm-tag';
    tag.textContent = mine ? `DM to ${nickOf(item.to)}` : 'DM to you';
    meta.append(' ', tag);
  }
  meta.append(' ', timeElement(d));
  if (li.dataset.edited) {
    const ed = document.createElement('span');
    ed.className = 'edited';
    ed.textContent = '(edited)';
    meta.append(' ', ed);
  }
  if (item.pending) {
    const p = document.createElement('span');
    p.className = 'sending';
    p.textContent = 'sending…';
    meta.append(' ', p);
  }
  const body = document.createElement('div');
  body.className = 'text';
  if (item.deleted) {
    body.classList.add('tombstone');
    body.textContent = 'message deleted';
  } else if (richText(body, item.text)) {
    li.classList.add('mention');
    li.dataset.mention = 'true';
  }
  li.append(meta, body);
  if (!item.pending && !item.deleted) {
    const actions = document.createElement('div');
    actions.className = 'actions';
    if (mine) {
      const edit = button('Edit', 'message-edit', `Edit message ${item.id}`);
      edit.addEventListener('click', () => startEdit(li, item));
      actions.append(edit);
    }
    if (mine || (item.kind === 'msg' && canModerate())) {
      const del = button('Delete', 'message-delete', `Delete message ${item.id}`);
      confirmClick(del, 'Delete', () => {
        s.klav.delete(item.id).catch((e) => composerNote(errText(e)));
      });
      actions.append(del);
    }
    if (actions.childElementCount) meta.append(actions);
  }
  return li;
}

function button(text, testid, label) {
  const b = document.createElement('button');
  b.type = 'button';
  b.className = 'link';
  b.textContent = text;
  b.dataset.testid = testid;
  if (label) b.setAttribute('aria-label', label);
  return b;
}

const LINK = /\bhttps?:\/\/[^\s<>"']+/gi;
const MENTION = /@[\p{L}\p{N}_.-]+/gu;

/** Fills `node` with `text`: links (http/https) and @mentions as elements, the
 * rest as text nodes. Returns whether the text mentions this user. */
function richText(node, text) {
  let mentioned = false;
  let at = 0;
  const addText = (part) => {
    let i = 0;
    for (const m of part.matchAll(MENTION)) {
      node.append(part.slice(i, m.index));
      const span = document.createElement('span');
      span.className = 'at';
      span.textContent = m[0];
      if (mentionsMe(m[0].slice(1))) {
        span.classList.add('me');
        mentioned = true;
      }
      node.append(span);
      i = m.index + m[0].length;
    }
    node.append(part.slice(i));
  };
  for (const m of text.matchAll(LINK)) {
    const url = m[0].replace(/[.,;:!?)\]]+$/, '');
    addText(text.slice(at, m.index));
    let href = null;
    try {
      const u = new URL(url);
      if (u.protocol === 'http:' || u.protocol === 'https:') href = u.href;
    } catch (_) {
      href = null;
    }
    if (href) {
      const a = document.createElement('a');
      a.href = href;
      a.textContent = url;
      a.target = '_blank';
      a.rel = 'noopener noreferrer';
      node.append(a);
    } else {
      node.append(url);
    }
    at = m.index + url.length;
  }
  addText(text.slice(at));
  return mentioned;
}

function mentionsMe(name) {
  const n = name.toLowerCase().replace(/[.-]+$/, '');
  const nick = s.nicks.get(s.user);
  return n === String(s.user).toLowerCase() || (!!nick && n === nick.toLowerCase());
}

function parseTs(ts) {
  // Microseconds are more than Date needs; keep milliseconds.
  return new Date(String(ts).replace(/(\.\d{3})\d+/, '$1'));
}

function timeElement(d) {
  const t = document.createElement('time');
  if (Number.isNaN(d.getTime())) return t;
  t.dateTime = d.toISOString();
  t.title = d.toLocaleString();
  t.textContent = d.toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' });
  return t;
}

function scrollToEnd() {
  const list = ui.messageList;
  list.scrollTop = list.scrollHeight;
  // Again once the layout has settled (the composer and fonts take their place),
  // so the newest entry is not left half under the composer.
  requestAnimationFrame(() => {
    list.scrollTop = list.scrollHeight;
  });
}

// ------------------------------------------------------------------ editing

function startEdit(li, item) {
  if (s.editing !== null) return;
  s.editing = item.id;
  const body = li.querySelector('.text');
  const field = document.createElement('textarea');
  field.className = 'edit-field';
  field.dataset.testid = 'message-edit-input';
  field.setAttribute('aria-label', 'Edit the message: Enter saves, Escape cancels');
  field.value = item.text;
  field.rows = Math.min(6, item.text.split('\n').length + 1);
  body.replaceWith(field);
  const actions = li.querySelector('.actions');
  if (actions) actions.hidden = true;
  field.focus();
  const finish = () => {
    s.editing = null;
    const now = s.open && s.rooms.get(s.open)?.entries.get(item.id);
    if (now) replaceMessage(now);
  };
  field.addEventListener('keydown', (e) => {
    if (e.isComposing || e.keyCode === 229) return;
    if (e.key === 'Escape') {
      e.preventDefault();
      finish();
      ui.messageInput.focus();
    } else if (e.key === 'Enter' && !e.shiftKey) {
      e.preventDefault();
      const text = field.value;
      if (text === item.text) return finish();
      if (!text.trim()) return composerNote(ERRORS.TEXT_REQUIRED);
      if ([...text].length > MAX_TEXT) return composerNote(ERRORS.TEXT_TOO_LONG);
      field.disabled = true;
      s.klav.edit(item.id, text).then(
        () => {
          finish();
          ui.messageInput.focus();
        },
        (err) => {
          field.disabled = false;
          composerNote(errText(err));
        },
      );
    }
    return undefined;
  });
}

// ------------------------------------------------------------------- rooms

function openRoom(id) {
  const room = s.rooms.get(id);
  if (!room) return;
  const before = s.open && s.rooms.get(s.open);
  if (before && before.readTimer) {
    // The room being left is marked read now, not a second later.
    clearTimeout(before.readTimer);
    before.readTimer = null;
    before.readAt = 0;
    sendRead(before);
  }
  s.open = id;
  s.editing = null;
  store(OPEN_KEY + s.user, id);
  showRoom(room);
  loadInitial(room);
  markRead(room);
  watchOpenRoom();
  ask(patiently(() => s.klav.roomInfo(id)), () => {});
  renderRooms();
  document.body.classList.remove('sidebar-open', 'members-open');
  ui.menuToggle.setAttribute('aria-expanded', 'false');
  ui.settingsView.hidden = true;
  ui.messageInput.focus();
}

/** The member list of the open room, with live presence (one room watched at a time). */
function watchOpenRoom() {
  const k = s.klav;
  if (s.membersOf && s.membersOf !== s.open) k.unwatchMembers(s.membersOf).catch(() => {});
  s.membersOf = s.open;
  s.members = new Map();
  renderMembers();
  if (!s.open) return;
  const room = s.open;
  ask(patiently(() => k.watchMembers(room)), (e) => {
    if (s.open === room) ui.membersNote.textContent = errText(e);
  });
}

function onMembers(ev) {
  if (ev.room !== s.membersOf) return;
  s.members = new Map();
  for (const m of ev.members || []) {
    learnNick(m.username, m.nickname);
    s.members.set(m.username, { ...m });
  }
  renderMembers();
}

function onMemberPresence(ev) {
  const m = ev.room === s.membersOf && s.members.get(ev.user);
  if (!m) return;
  m.online = !!ev.online;
  renderMembers();
}

function showRoom(room) {
  ui.messageList.replaceChildren();
  composerNote('');
  document.body.classList.toggle('no-room', !room);
  ui.composer.hidden = !room;
  ui.membersPanel.hidden = !room;
  ui.membersToggle.hidden = !room;
  ui.inviteNote.textContent = '';
  ui.membersNote.textContent = '';
  if (!room) {
    s.open = null;
    if (s.membersOf && s.klav) s.klav.unwatchMembers(s.membersOf).catch(() => {});
    s.membersOf = null;
    s.members = new Map();
    ui.membersList.replaceChildren();
    ui.roomTitle.textContent = 'No room open';
    ui.roomTopic.textContent = '';
    ui.roomLeave.hidden = true;
    ui.roomHint.hidden = false;
    ui.loadOlder.hidden = true;
    renderTyping();
    return;
  }
  renderHead();
  ui.roomLeave.hidden = false;
  ui.roomHint.hidden = true;
  const frag = document.createDocumentFragment();
  for (const item of [...room.entries.values()].sort((a, b) => a.id - b.id)) frag.append(messageElement(item));
  for (const p of s.pending.values()) if (p.room === room.id) frag.append(p.li);
  ui.messageList.append(frag);
  markSeparators();
  scrollToEnd();
  updateOlderButton();
  renderTyping();
}

function renderHead() {
  const room = s.rooms.get(s.open);
  if (!room) return;
  ui.roomTitle.textContent = room.name;
  ui.roomTitle.dataset.private = String(room.private);
  ui.roomTopic.textContent = room.topic || '';
}

function updateOlderButton() {
  const room = s.open && s.rooms.get(s.open);
  ui.loadOlder.hidden = !room || room.state !== 'ready' || room.oldestReached;
}

function previewText(room) {
  const last = room.last;
  if (!last) return 'No messages yet';
  if (last.kind === 'system') return last.text;
  const text = last.deleted ? 'message deleted' : last.text;
  return `${nickOf(last.from)}: ${text}`;
}

function renderRooms() {
  const focused = document.activeElement && document.activeElement.closest('[data-room-id]');
  const focusedId = focused && ui.roomList.contains(focused) ? focused.dataset.roomId : null;
  const rooms = [...s.rooms.values()].sort((a, b) => {
    const ta = a.last ? String(a.last.ts) : '';
    const tb = b.last ? String(b.last.ts) : '';
    if (ta !== tb) return ta < tb ? 1 : -1;
    return a.name.localeCompare(b.name);
  });
  const frag = document.createDocumentFragment();
  let unreadTotal = 0;
  for (const room of rooms) {
    const unread = room.id === s.open && pageVisible() ? 0 : room.unread;
    unreadTotal += unread;
    const li = document.createElement('li');
    li.dataset.testid = 'room-item';
    li.dataset.roomId = room.id;
    li.dataset.unread = String(unread);
    li.className = 'room-item';
    if (room.id === s.open) li.classList.add('open');
    const btn = document.createElement('button');
    btn.type = 'button';
    btn.className = 'room-button';
    if (room.id === s.open) btn.setAttribute('aria-current', 'true');
    const top = document.createElement('span');
    top.className = 'room-top';
    const name = document.createElement('span');
    name.className = 'room-name';
    name.textContent = room.name;
    top.append(name);
    if (room.private) {
      const lock = document.createElement('span');
      lock.className = 'tag';
      lock.textContent = 'private';
      top.append(lock);
    }
    if (unread > 0) {
      const badge = document.createElement('span');
      badge.className = 'badge';
      badge.dataset.testid = 'unread';
      badge.textContent = room.unreadMore ? '99+' : String(unread);
      badge.setAttribute('aria-label', `${unread} unread`);
      top.append(badge);
    }
    const preview = document.createElement('span');
    preview.className = 'preview';
    preview.dataset.testid = 'room-preview';
    preview.textContent = previewText(room);
    btn.append(top, preview);
    li.append(btn);
    li.addEventListener('click', () => openRoom(room.id));
    frag.append(li);
  }
  ui.roomList.replaceChildren(frag);
  document.title = unreadTotal > 0 ? `(${unreadTotal}) Klav` : 'Klav';
  if (focusedId) {
    const again = ui.roomList.querySelector(`[data-room-id="${CSS.escape(focusedId)}"] button`);
    if (again) again.focus();
  }
}

// ----------------------------------------------------------------- members

function renderMembers() {
  const active = document.activeElement;
  const keep = active && ui.membersList.contains(active)
    ? [active.closest('[data-username]')?.dataset.username, active.dataset.testid]
    : null;
  const room = s.open && s.rooms.get(s.open);
  const order = { owner: 0, admin: 1, member: 2 };
  const list = [...s.members.values()].sort((a, b) => {
    if (a.online !== b.online) return a.online ? -1 : 1;
    const ra = order[a.role] ?? 3;
    const rb = order[b.role] ?? 3;
    return ra !== rb ? ra - rb : a.username.localeCompare(b.username);
  });
  const mod = canModerate();
  ui.membersList.replaceChildren(
    ...list.map((m) => {
      const li = document.createElement('li');
      li.className = 'member';
      li.dataset.testid = 'member';
      li.dataset.username = m.username;
      li.dataset.online = String(!!m.online);
      // Rooms from before owners list no roles: everyone there is a member.
      li.dataset.role = m.role || 'member';
      li.tabIndex = -1;
      const dot = document.createElement('span');
      dot.className = 'dot';
      dot.setAttribute('aria-label', m.online ? 'online' : 'offline');
      const name = document.createElement('span');
      name.className = 'member-name';
      name.textContent = m.nickname && m.nickname !== m.username ? `${m.nickname} (${m.username})` : m.username;
      li.append(dot, name);
      if (m.role && m.role !== 'member') {
        const role = document.createElement('span');
        role.className = 'tag';
        role.textContent = m.role;
        li.append(role);
      }
      if (m.username !== s.user) {
        const actions = document.createElement('span');
        actions.className = 'actions';
        const other = m.role === 'member' || (room && room.role === 'owner' && m.role !== 'owner');
        if (mod && other) {
          const kick = button('Kick', 'member-kick', `Kick ${m.username}`);
          confirmClick(kick, 'Kick', () => moderate('kick', m.username));
          const ban = button('Ban', 'member-ban', `Ban ${m.username}`);
          confirmClick(ban, 'Ban', () => moderate('ban', m.username));
          actions.append(kick, ban);
        }
        const blocked = s.blocked.has(m.username);
        const block = button(blocked ? 'Unblock' : 'Block', 'member-block', `${blocked ? 'Unblock' : 'Block'} ${m.username}`);
        block.dataset.blocked = String(blocked);
        block.addEventListener('click', () => setBlocked(m.username, !blocked, ui.membersNote));
        actions.append(block);
        li.append(actions);
      }
      return li;
    }),
  );
  if (keep) {
    const li = ui.membersList.querySelector(`[data-username="${CSS.escape(keep[0] || '')}"]`);
    const again = li && (li.querySelector(`[data-testid="${keep[1]}"]`) || li);
    if (again) again.focus();
  }
}

function moderate(action, user) {
  const room = s.open;
  const req = action === 'kick' ? s.klav.kick(room, user) : s.klav.ban(room, user);
  req.then(
    (ack) => {
      const said = {
        KICKED: `${user} was removed from the room.`,
        BANNED: `${user} is banned from the room.`,
        ALREADY: `${user} was banned already.`,
        NOT_A_MEMBER: `${user} is not a member.`,
      };
      ui.membersNote.textContent = said[ack.status] || ack.status;
    },
    (e) => {
      ui.membersNote.textContent = errText(e);
    },
  );
}

function setBlocked(user, block, note) {
  const req = block ? s.klav.block(user) : s.klav.unblock(user);
  req.then(
    (ack) => {
      const said = {
        BLOCKED: `You blocked ${user}: they cannot DM or invite you, and never see you online.`,
        ALREADY: `You had blocked ${user} already.`,
        NOT_REGISTERED: `There is no user ${user}.`,
        SELF: 'You cannot block yourself.',
        UNBLOCKED: `You unblocked ${user}.`,
        NOT_BLOCKED: `You had not blocked ${user}.`,
      };
      note.textContent = said[ack.status] || ack.status;
      ask(s.klav.blockedList());
    },
    (e) => {
      note.textContent = errText(e);
    },
  );
}

function renderBlocked() {
  ui.blockedList.replaceChildren(
    ...[...s.blocked].map(([username, nickname]) => {
      const li = document.createElement('li');
      li.dataset.testid = 'blocked-item';
      li.dataset.username = username;
      const name = document.createElement('span');
      name.textContent = nickname && nickname !== username ? `${nickname} (${username})` : username;
      const b = button('Unblock', 'blocked-unblock', `Unblock ${username}`);
      b.addEventListener('click', () => setBlocked(username, false, ui.settingsNote));
      li.append(name, ' ', b);
      return li;
    }),
  );
  if (s.blocked.size === 0) {
    const li = document.createElement('li');
    li.className = 'empty';
    li.textContent = 'Nobody.';
    ui.blockedList.append(li);
  }
  renderMembers();
}

// ------------------------------------------------------------------ typing

function onTyping(ev) {
  learnNick(ev.user, ev.user_nickname);
  let room = s.typing.get(ev.room);
  if (!room) s.typing.set(ev.room, (room = new Map()));
  room.set(ev.user, { nick: ev.user_nickname || ev.user, until: Date.now() + TYPING_SHOW_MS });
  renderTyping();
}

function renderTyping() {
  clearTimeout(s.typingTimer);
  const now = Date.now();
  const room = s.open && s.typing.get(s.open);
  const names = [];
  let next = Infinity;
  if (room) {
    for (const [user, t] of room) {
      if (t.until <= now) room.delete(user);
      else {
        names.push(t.nick);
        next = Math.min(next, t.until);
      }
    }
  }
  let text = '';
  if (names.length === 1) text = `${names[0]} is typing…`;
  else if (names.length === 2) text = `${names[0]} and ${names[1]} are typing…`;
  else if (names.length > 2) text = 'Several people are typing…';
  ui.typingIndicator.textContent = text;
  if (next !== Infinity) s.typingTimer = setTimeout(renderTyping, next - now + 20);
}

// ------------------------------------------------------------- invitations

function renderInvites() {
  const items = [...s.invites.values()];
  ui.invitesBox.hidden = items.length === 0;
  ui.invitesList.replaceChildren(
    ...items.map((inv) => {
      const li = document.createElement('li');
      li.dataset.testid = 'invite-item';
      li.dataset.roomId = inv.room;
      const text = document.createElement('span');
      text.className = 'invite-text';
      const room = document.createElement('strong');
      room.textContent = inv.name;
      text.append(`${inv.by_nickname || inv.by} invites you to `, room, inv.private ? ' (private)' : '');
      const accept = button('Join', 'invite-accept', `Join ${inv.name}`);
      accept.addEventListener('click', () => answerInvite(inv, true));
      const decline = button('Decline', 'invite-decline', `Decline ${inv.name}`);
      decline.addEventListener('click', () => answerInvite(inv, false));
      li.append(text, ' ', accept, decline);
      return li;
    }),
  );
}

function answerInvite(inv, accept) {
  const done = () => {
    s.invites.delete(inv.room);
    renderInvites();
  };
  if (!accept) {
    s.klav.declineInvite(inv.room).then(done, (e) => {
      ui.roomError.textContent = errText(e);
    });
    return;
  }
  s.openWhenListed = inv.room;
  s.klav.join(inv.room).then(
    () => {
      done();
      refreshRooms();
    },
    (e) => {
      s.openWhenListed = null;
      if (e.code === 'ROOM_NOT_FOUND') {
        ui.roomError.textContent = 'That invitation is no longer valid.';
        done();
      } else ui.roomError.textContent = errText(e);
    },
  );
}

function invite(user) {
  const said = {
    INVITED: `${user} is invited.`,
    ALREADY_MEMBER: `${user} is already a member.`,
    ALREADY_INVITED: `${user} is invited already.`,
    NOT_REGISTERED: `There is no user ${user}.`,
    BANNED: `${user} is banned from this room.`,
    REFUSED: `${user} does not accept invitations from you.`,
  };
  s.klav.invite(s.open, user).then(
    (ack) => {
      ui.inviteNote.textContent = said[ack.status] || ack.status;
    },
    (e) => {
      ui.inviteNote.textContent =
        e.code === 'NOT_ALLOWED' ? 'Only the owner or an admin can invite to this room.' : errText(e);
    },
  );
}

// ----------------------------------------------------------------- friends

function renderOnline() {
  const names = [...s.online.keys()].sort((a, b) => a.toLowerCase().localeCompare(b.toLowerCase()));
  ui.onlineFriends.replaceChildren(
    ...names.map((username) => {
      const li = document.createElement('li');
      li.dataset.testid = 'online-friend';
      li.dataset.username = username;
      const dot = document.createElement('span');
      dot.className = 'dot';
      dot.setAttribute('aria-hidden', 'true');
      const nick = s.online.get(username);
      li.append(dot, nick === username ? username : `${nick} (${username})`);
      return li;
    }),
  );
  if (names.length === 0) {
    const li = document.createElement('li');
    li.className = 'empty';
    li.textContent = 'Nobody you follow is online.';
    ui.onlineFriends.append(li);
  }
}

function renderFollowing(list) {
  ui.following.replaceChildren(
    ...list.map((f) => {
      const li = document.createElement('li');
      li.dataset.testid = 'followed';
      li.dataset.username = f.username;
      const name = document.createElement('span');
      name.textContent = f.nickname && f.nickname !== f.username ? `${f.nickname} (${f.username})` : f.username;
      const btn = button('Unfollow', 'friend-unfollow', `Unfollow ${f.username}`);
      btn.addEventListener('click', () => {
        ask(s.klav.request({ type: 'friend_unfollow', to: f.username }), (e) => {
          ui.friendError.textContent = errText(e);
        });
      });
      li.append(name, ' ', btn);
      return li;
    }),
  );
}

function onOfflineDm(ev) {
  learnNick(ev.from, ev.from_nickname);
  s.offline.push(ev);
  renderOffline();
  const room = s.rooms.get(ev.room);
  notify(`${ev.from_nickname || ev.from} (DM in ${room ? room.name : ev.room})`, ev.text, ev.room);
}

function renderOffline() {
  ui.offlineBox.hidden = s.offline.length === 0;
  ui.offlineDms.replaceChildren(
    ...s.offline.map((ev) => {
      const li = document.createElement('li');
      li.dataset.testid = 'offline-dm';
      li.dataset.from = ev.from;
      li.dataset.room = ev.room;
      const head = document.createElement('div');
      head.className = 'meta';
      const who = document.createElement('strong');
      who.textContent = ev.from_nickname || ev.from;
      const where = document.createElement('span');
      where.className = 'where';
      where.dataset.testid = 'offline-dm-room';
      const room = s.rooms.get(ev.room);
      where.textContent = `in ${room ? room.name : ev.room}`;
      head.append(who, ' ', where, ' ', timeElement(parseTs(ev.at || ev.ts)));
      const body = document.createElement('div');
      body.className = 'text';
      body.textContent = ev.text;
      li.append(head, body);
      li.tabIndex = 0;
      li.title = 'Open the room';
      li.addEventListener('click', () => openRoom(ev.room));
      li.addEventListener('keydown', (e) => {
        if (e.key === 'Enter') openRoom(ev.room);
      });
      return li;
    }),
  );
}

// ----------------------------------------------------------- notifications

function maybeNotify(room, item) {
  if (item.deleted) return;
  const toMe = item.kind === 'dm' && item.to === s.user;
  const mention = item.kind === 'msg' && richText(document.createElement('div'), item.text);
  if (!toMe && !mention) return;
  const who = item.from_nickname || nickOf(item.from);
  notify(toMe ? `${who} (DM in ${room.name})` : `${who} mentioned you in ${room.name}`, item.text, room.id);
}

/** A desktop notification, only while the tab is hidden and only if allowed. */
function notify(title, body, roomId) {
  if (pageVisible() || typeof Notification !== 'function' || Notification.permission !== 'granted') return;
  try {
    const n = new Notification(title, { body: body || '', tag: roomId || undefined });
    n.onclick = () => {
      window.focus();
      if (roomId && s.rooms.has(roomId)) openRoom(roomId);
      n.close();
    };
  } catch (_) {
    // Some browsers allow notifications only from a service worker.
  }
}

function renderNotifyButton() {
  const can = typeof Notification === 'function';
  ui.notifyEnable.hidden = !can || Notification.permission !== 'default';
}

// ------------------------------------------------------------------ sending

/** The username a DM goes to: a username or the nickname of someone in the room. */
function recipient(typed) {
  if (s.members.has(typed)) return typed;
  const lower = typed.toLowerCase();
  const byName = [...s.members.values()].filter((m) => m.username.toLowerCase() === lower);
  if (byName.length === 1) return byName[0].username;
  const byNick = [...s.members.values()].filter((m) => (m.nickname || '').toLowerCase() === lower);
  if (byNick.length === 1) return byNick[0].username;
  return s.members.size ? null : typed;
}

function dmRefusal(to, status) {
  switch (status) {
    case 'RECIPIENT_NOT_IN_ROOM':
    case 'NOT_A_MEMBER':
      return `${to} is not a member of this room: DMs go to someone here (type their username or nickname).`;
    case 'USER_NOT_FOUND':
      return `There is no user called ${to} in this room: type a member's username or nickname.`;
    case 'SENDER_NOT_IN_ROOM':
      return ERRORS.NOT_A_MEMBER;
    case 'BLOCKED':
      return `${to} does not accept direct messages from you.`;
    default:
      return status;
  }
}

function sendMessage() {
  composerNote('');
  const text = ui.messageInput.value;
  if (!text.trim()) return;
  const roomId = s.open;
  if (!roomId) {
    composerNote('Open a room first.');
    return;
  }
  if ([...text].length > MAX_TEXT) {
    composerNote(ERRORS.TEXT_TOO_LONG);
    return;
  }
  const typed = ui.dmTo.value.trim();
  const to = typed ? recipient(typed) : null;
  if (typed && !to) {
    composerNote(dmRefusal(typed, 'USER_NOT_FOUND'));
    return;
  }
  const clientId = uuid();
  const item = { pending: true, kind: to ? 'dm' : 'msg', from: s.user, to, text, ts: null };
  const li = messageElement(item);
  s.pending.set(clientId, { room: roomId, li });
  ui.messageList.append(li);
  markSeparators();
  scrollToEnd();
  ui.messageInput.value = '';
  // The next message goes to the room unless a recipient is typed again.
  ui.dmTo.value = '';
  const giveBack = (why) => {
    li.remove();
    s.pending.delete(clientId);
    if (s.open !== roomId) return;
    composerNote(why);
    if (!ui.messageInput.value) ui.messageInput.value = text;
    if (to && !ui.dmTo.value) ui.dmTo.value = typed;
  };
  const session = s;
  s.klav.send(roomId, text, to ? { to, clientId } : { clientId }).then(
    (reply) => {
      if (session !== s) return;
      if (ui.sendError.classList.contains('info')) composerNote('');
      if (!to) return;
      if (reply.status === 'DELIVERED' || reply.status === 'QUEUED') {
        if (reply.status === 'QUEUED') {
          composerNote(`${nickOf(to)} is offline: they will get it when they connect.`, true);
        }
        // The own copy of a DM comes only from history (with its id).
        const room = s.rooms.get(roomId);
        if (room && room.state === 'ready') catchUp(room);
        else {
          li.remove();
          s.pending.delete(clientId);
        }
      } else {
        giveBack(dmRefusal(typed, reply.status));
      }
    },
    (e) => {
      if (session !== s) return;
      giveBack(to && e.code === 'NOT_A_MEMBER' ? ERRORS.NOT_A_MEMBER : errText(e));
    },
  );
}

function onComposerInput() {
  const text = ui.messageInput.value;
  // A "too long" error goes once the text fits again (or is cleared).
  if (ui.sendError.textContent === ERRORS.TEXT_TOO_LONG && [...text].length <= MAX_TEXT) composerNote('');
  if (!text || !s.open || !s.klav) return;
  const now = Date.now();
  if (now - s.typingSentAt >= TYPING_EVERY_MS && s.klav.typing(s.open)) s.typingSentAt = now;
}

// ---------------------------------------------------------------- settings

async function accountRequest(path, body) {
  ui.settingsNote.textContent = '';
  try {
    const r = await postJson(path, body, s.token);
    if (r.status === 200) return r.data;
    if (r.status === 401) {
      ui.settingsNote.textContent =
        r.data.detail === 'invalid credentials'
          ? 'Wrong current password.'
          : 'This session is no longer valid: log out and in again.';
    } else ui.settingsNote.textContent = httpFailure(r);
  } catch (_) {
    ui.settingsNote.textContent = 'Cannot reach the server.';
  }
  return null;
}

async function changePassword() {
  const password = ui.passwordCurrent.value;
  const next = ui.passwordNew.value;
  if (!password || !next) {
    ui.settingsNote.textContent = 'Type your current password and a new one.';
    return;
  }
  const session = s;
  s.passwordChange = accountRequest('/password', { password, new_password: next });
  const data = await s.passwordChange;
  session.passwordChange = null;
  if (!data || session !== s) return;
  // Every older token is revoked now: this page carries on with the new one.
  s.token = data.access_token;
  s.klav.token = data.access_token;
  saveSession();
  ui.passwordCurrent.value = ui.passwordNew.value = '';
  ui.settingsNote.textContent = 'Password changed. Every other session has been logged out.';
  s.klav.request({ type: 'auth', token: data.access_token }).catch(() => {
    // The old socket was closed first: klav.js reconnects with the new token.
  });
}

async function logoutAll() {
  const data = await accountRequest('/logout_all', {});
  if (data) endSession('You logged out everywhere.', true);
}

async function deleteAccount() {
  const password = ui.passwordCurrent.value;
  if (!password) {
    ui.settingsNote.textContent = 'Type your current password to delete the account.';
    return;
  }
  const data = await accountRequest('/account/delete', { password, erase: ui.accountErase.checked });
  if (data) {
    ui.passwordCurrent.value = '';
    endSession('Your account was deleted.', true);
  }
}

// ------------------------------------------------------------------- wiring

ui.loginForm.addEventListener('submit', (e) => {
  e.preventDefault();
  authenticate(false);
});
ui.registerSubmit.addEventListener('click', () => authenticate(true));
ui.logout.addEventListener('click', () => endSession('', true));

ui.joinForm.addEventListener('submit', (e) => {
  e.preventDefault();
  ui.roomError.textContent = '';
  const name = ui.roomName.value.trim();
  if (!name) {
    ui.roomError.textContent = ERRORS.ROOM_ID_OR_NAME_REQUIRED;
    return;
  }
  const priv = ui.roomPrivate.checked;
  const fail = (err) => {
    s.openWhenListed = null;
    ui.roomError.textContent = err.code === 'BANNED' ? `You are banned from ${name}.` : errText(err);
  };
  ui.roomName.value = '';
  ui.roomPrivate.checked = false;
  if (priv) {
    s.klav.createRoom(name, { private: true }).then((ack) => {
      if (ack.status !== 'CREATED') {
        ui.roomError.textContent = 'That room name is not allowed.';
        return;
      }
      s.openWhenListed = ack.room_id;
      refreshRooms();
    }, fail);
  } else {
    s.klav.join(name).then((ack) => {
      s.openWhenListed = ack.room;
      if (s.rooms.has(ack.room)) openRoom(ack.room);
      refreshRooms();
    }, fail);
  }
});

ui.roomLeave.addEventListener('click', () => {
  const room = s.open;
  if (room) s.klav.leave(room).then(() => onLeft(room), (e) => composerNote(errText(e)));
});

ui.friendForm.addEventListener('submit', (e) => {
  e.preventDefault();
  const to = ui.friendName.value.trim();
  if (!to) {
    ui.friendError.textContent = 'Type a username to follow.';
    return;
  }
  ui.friendName.value = '';
  ask(s.klav.request({ type: 'friend_follow', to }), (err) => {
    ui.friendError.textContent = errText(err);
  });
});

ui.inviteForm.addEventListener('submit', (e) => {
  e.preventDefault();
  const user = ui.inviteUser.value.trim();
  if (!user || !s.open) return;
  ui.inviteUser.value = '';
  invite(user);
});

ui.composer.addEventListener('submit', (e) => {
  e.preventDefault();
  sendMessage();
});
ui.messageInput.addEventListener('keydown', (e) => {
  if (e.key !== 'Enter' || e.shiftKey) return;
  // Enter that confirms an IME composition (Korean, Japanese, …) is not a send;
  // keyCode 229 covers browsers that report the composition only that way.
  if (e.isComposing || e.keyCode === 229) return;
  e.preventDefault();
  sendMessage();
});
ui.messageInput.addEventListener('input', onComposerInput);

ui.messageList.addEventListener('scroll', () => {
  const room = s.open && s.rooms.get(s.open);
  if (room && ui.messageList.scrollTop < 60) loadOlder(room);
});
ui.loadOlder.addEventListener('click', () => {
  const room = s.open && s.rooms.get(s.open);
  if (room) loadOlder(room);
});

ui.menuToggle.addEventListener('click', () => {
  const open = document.body.classList.toggle('sidebar-open');
  ui.menuToggle.setAttribute('aria-expanded', String(open));
});
ui.membersToggle.addEventListener('click', () => {
  const open = document.body.classList.toggle('members-open');
  ui.membersToggle.setAttribute('aria-expanded', String(open));
});
ui.membersClose.addEventListener('click', () => {
  document.body.classList.remove('members-open');
  ui.membersToggle.setAttribute('aria-expanded', 'false');
  ui.membersToggle.focus();
});

ui.settingsOpen.addEventListener('click', () => {
  ui.settingsView.hidden = !ui.settingsView.hidden;
  ui.settingsNote.textContent = '';
  renderNotifyButton();
  if (!ui.settingsView.hidden) ui.passwordCurrent.focus();
});
ui.settingsClose.addEventListener('click', () => {
  ui.settingsView.hidden = true;
  ui.settingsOpen.focus();
});
ui.passwordForm.addEventListener('submit', (e) => {
  e.preventDefault();
  changePassword();
});
ui.logoutAll.addEventListener('click', () => logoutAll());
confirmClick(ui.accountDelete, 'Delete my account', () => deleteAccount());
ui.notifyEnable.addEventListener('click', () => {
  // Asked only here, on the person's click: never on load.
  Notification.requestPermission().then(renderNotifyButton, () => {});
});

document.addEventListener('visibilitychange', () => {
  const room = s.open && s.rooms.get(s.open);
  if (room && pageVisible()) markRead(room);
});

window.addEventListener('pagehide', () => {
  store('klav.nicks', JSON.stringify([...s.nicks].slice(-500)));
});

showMinPassword();
// A session kept from an earlier visit.
let saved = null;
try {
  saved = JSON.parse(load(SESSION_KEY) || 'null');
} catch (_) {
  saved = null;
}
if (saved && typeof saved.token === 'string' && typeof saved.user === 'string') {
  if (Date.now() < tokenExpiry(saved.token)) startSession(saved.token, saved.user);
  else endSession('Your session has expired: please log in again.');
} else {
  ui.loginUsername.focus();
}
