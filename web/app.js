// Klav's browser client: accounts over HTTP, then one WebSocket speaking the JSON
// protocol of docs/protocol.md. No framework and no build step; every string that came
// from a user is put on the page with textContent, never parsed as HTML.
'use strict';

(() => {
  /** Entries asked for when a room is opened or scrolled back. */
  const PAGE = 50;
  /** Entries asked for per catch-up request (the server's largest `limit`). */
  const CATCHUP = 200;
  const BACKOFF_MIN_MS = 500;
  const BACKOFF_MAX_MS = 15000;
  /** Refused upgrades in a row, with the server otherwise healthy, after which the
   * token is taken to be rejected (a browser cannot see the 403 itself). */
  const REFUSALS_BEFORE_LOGOUT = 3;
  const SESSION_KEY = 'klav.session';

  const ERRORS = {
    NOT_A_MEMBER: 'You are not a member of this room.',
    TEXT_TOO_LONG: 'Message too long: 4000 characters at most.',
    TEXT_REQUIRED: 'Type a message first.',
    RATE_LIMITED: 'Too many requests: wait a moment and try again.',
    UNAVAILABLE: 'The server could not store that right now; nothing was sent. Try again.',
    ROOM_NOT_FOUND: 'No such room.',
    ROOM_ID_OR_NAME_REQUIRED: 'Type a room name.',
    ROOM_ID_AND_TO_REQUIRED: 'Type whom the direct message is for.',
    FOLLOW_TO_REQUIRED: 'Type a username to follow.',
    UNFOLLOW_TO_REQUIRED: 'Type a username to unfollow.',
    BAD_REQUEST: 'The server did not understand that request.',
  };
  const DM_STATUS = {
    SENDER_NOT_IN_ROOM: 'You are not a member of this room.',
    RECIPIENT_NOT_IN_ROOM: (to) => `${to} is not a member of this room.`,
  };

  const el = (id) => document.getElementById(id);
  const ui = {
    loginView: el('login-view'),
    loginForm: el('login-form'),
    username: el('login-username'),
    password: el('login-password'),
    nickname: el('login-nickname'),
    authError: el('auth-error'),
    loginSubmit: el('login-submit'),
    registerSubmit: el('register-submit'),
    chatView: el('chat-view'),
    menu: el('menu-toggle'),
    status: el('connection-status'),
    me: el('me'),
    logout: el('logout'),
    joinForm: el('join-form'),
    roomName: el('room-name'),
    roomError: el('room-error'),
    roomList: el('room-list'),
    friendForm: el('friend-form'),
    friendName: el('friend-name'),
    friendNote: el('friend-error'),
    onlineFriends: el('online-friends'),
    following: el('following'),
    offlineBox: el('offline-box'),
    offlineDms: el('offline-dms'),
    roomTitle: el('room-title'),
    roomHint: el('room-hint'),
    leave: el('room-leave'),
    loadOlder: el('load-older'),
    messages: el('message-list'),
    composer: el('composer'),
    sendError: el('send-error'),
    dmTo: el('dm-to'),
    input: el('message-input'),
  };

  /** Everything the page knows; reset on logout. */
  let s = freshState();

  function freshState() {
    return {
      token: null,
      user: null,
      ws: null,
      /** A ticket for the next upgrade is being asked for. */
      connecting: false,
      connected: false,
      stopped: true,
      attempt: 0,
      /** Connection attempts in a row that never opened. */
      refused: 0,
      /** When /health last answered while upgrades were failing. */
      healthyAt: 0,
      retryTimer: null,
      nextReq: 1,
      /** req_id → what the request was for, so replies and errors land where asked. */
      pending: new Map(),
      /** room id → { id, name, last, unread, entries: Map(id → entry), state }. */
      rooms: new Map(),
      open: null,
      /** Room to open once `my_rooms` lists it (after joining by name). */
      openWhenListed: null,
      joinPending: false,
      online: new Map(),
    };
  }

  // ---------------------------------------------------------------- accounts

  async function postJson(path, body) {
    const r = await fetch(path, {
      method: 'POST',
      headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify(body),
    });
    let data = {};
    try {
      data = await r.json();
    } catch (_) {
      // A body that is not JSON: the status alone tells what happened.
    }
    return { status: r.status, data, retryAfter: r.headers.get('Retry-After') };
  }

  function authFailure(r) {
    const detail = r.data && typeof r.data.detail === 'string' ? r.data.detail : '';
    if (r.status === 429) {
      const secs = Number.parseInt(r.retryAfter || '', 10);
      const wait = Number.isFinite(secs) ? formatWait(secs) : 'a few minutes';
      return `Too many failed logins. Try again in ${wait}.`;
    }
    if (r.status === 401) {
      return detail === 'not registered'
        ? 'No account with that username: register first.'
        : 'Wrong username or password.';
    }
    if (r.status === 503) return 'The server is unavailable right now. Try again shortly.';
    return detail ? `${detail[0].toUpperCase()}${detail.slice(1)}.` : `Request failed (HTTP ${r.status}).`;
  }

  function formatWait(secs) {
    if (secs < 90) return `${secs} s`;
    return `${Math.ceil(secs / 60)} min`;
  }

  async function authenticate(register) {
    const username = ui.username.value.trim();
    const password = ui.password.value;
    const nickname = ui.nickname.value.trim();
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
        if (r.status !== 200) return showAuthError(authFailure(r));
        if (r.data.status === 'ALREADY') {
          return showAuthError('That username is taken: log in, or pick another one.');
        }
      }
      const r = await postJson('/login', { username, password });
      if (r.status !== 200) return showAuthError(authFailure(r));
      ui.password.value = '';
      startSession(r.data.access_token, username);
    } catch (_) {
      showAuthError('Cannot reach the server.');
    } finally {
      ui.loginSubmit.disabled = ui.registerSubmit.disabled = false;
    }
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

  function startSession(token, user) {
    s = freshState();
    s.token = token;
    s.user = user;
    s.stopped = false;
    try {
      localStorage.setItem(SESSION_KEY, JSON.stringify({ token, user }));
    } catch (_) {
      // Storage may be disabled; the session then lasts as long as the page.
    }
    ui.me.textContent = user;
    ui.loginView.hidden = true;
    ui.chatView.hidden = false;
    clearChat();
    connect();
  }

  /** Back to the login form, with `message` shown there. */
  function endSession(message) {
    s.stopped = true;
    clearTimeout(s.retryTimer);
    if (s.ws) {
      const ws = s.ws;
      s.ws = null;
      ws.close(1000);
    }
    try {
      localStorage.removeItem(SESSION_KEY);
    } catch (_) {
      // Nothing stored.
    }
    s = freshState();
    clearChat();
    ui.chatView.hidden = true;
    ui.loginView.hidden = false;
    showAuthError(message || '');
    ui.username.focus();
  }

  function clearChat() {
    ui.roomList.replaceChildren();
    ui.onlineFriends.replaceChildren();
    ui.following.replaceChildren();
    ui.offlineDms.replaceChildren();
    ui.offlineBox.hidden = true;
    ui.friendNote.textContent = '';
    ui.roomError.textContent = '';
    showRoom(null);
  }

  // -------------------------------------------------------------- connection

  /** A one-time ticket for the next upgrade, so that the token never goes into
   * a URL (where proxies log it): the string, `'refused'` when the server no
   * longer takes the token (HTTP 401), or null when it could not be asked. */
  async function wsTicket() {
    try {
      const r = await fetch('/ws-ticket', {
        method: 'POST',
        headers: { Authorization: `Bearer ${s.token}` },
        cache: 'no-store',
      });
      if (r.status === 401) return 'refused';
      if (!r.ok) return null;
      const data = await r.json();
      return typeof data.ticket === 'string' ? data.ticket : null;
    } catch (_) {
      return null;
    }
  }

  async function connect() {
    clearTimeout(s.retryTimer);
    if (s.stopped || s.connecting) return;
    if (Date.now() >= tokenExpiry(s.token)) {
      endSession('Your session has expired: please log in again.');
      return;
    }
    setStatus('connecting', 'connecting…');
    const session = s;
    session.connecting = true;
    const ticket = await wsTicket();
    session.connecting = false;
    // Logged out, or logged in anew, meanwhile.
    if (session !== s || s.stopped) return;
    if (ticket === 'refused') {
      endSession('The server no longer accepts this session: please log in again.');
      return;
    }
    if (ticket === null) {
      retryLater();
      return;
    }
    const scheme = location.protocol === 'https:' ? 'wss:' : 'ws:';
    const ws = new WebSocket(`${scheme}//${location.host}/ws?ticket=${encodeURIComponent(ticket)}`);
    s.ws = ws;
    let opened = false;
    const startedAt = Date.now();
    ws.onopen = () => {
      if (ws !== s.ws) return;
      opened = true;
      s.attempt = 0;
      s.refused = 0;
      s.healthyAt = 0;
      s.connected = true;
      setStatus('online', 'online');
      onConnected();
    };
    ws.onmessage = (e) => {
      if (ws !== s.ws) return;
      let ev;
      try {
        ev = JSON.parse(e.data);
      } catch (_) {
        return;
      }
      if (ev && typeof ev.type === 'string') handle(ev);
    };
    ws.onclose = () => {
      if (ws !== s.ws) return;
      s.ws = null;
      s.connected = false;
      s.pending.clear();
      for (const room of s.rooms.values()) {
        if (room.state === 'loading') room.state = 'new';
        room.loadingOlder = false;
      }
      if (s.stopped) return;
      s.refused = opened ? 0 : s.refused + 1;
      if (!opened && s.healthyAt && s.healthyAt < startedAt) {
        // The server answered its health check, and then refused this upgrade.
        endSession('The server no longer accepts this session: please log in again.');
        return;
      }
      if (s.refused >= REFUSALS_BEFORE_LOGOUT) checkHealth();
      retryLater();
    };
  }

  /** Upgrades keep failing: is the server up? If it is and still refuses the next
   * upgrade, it is this token it refuses (signed with another secret, or for an
   * account that is gone), and the person has to log in again. */
  async function checkHealth() {
    const session = s;
    try {
      const r = await fetch('/health', { cache: 'no-store' });
      if (r.ok && session === s) s.healthyAt = Date.now();
    } catch (_) {
      // Unreachable: keep retrying.
    }
  }

  /** Exponential backoff with jitter, so a restarted server is not hit by every
   * page at the same instant. */
  function retryLater() {
    const ceiling = Math.min(BACKOFF_MAX_MS, BACKOFF_MIN_MS * 2 ** s.attempt);
    const delay = Math.round(ceiling / 2 + (Math.random() * ceiling) / 2);
    s.attempt += 1;
    setStatus('offline', `offline — retrying in ${Math.max(1, Math.round(delay / 1000))} s`);
    s.retryTimer = setTimeout(connect, delay);
  }

  /** A line under the composer: an error, or (`info`) a plain note. */
  function composerNote(text, info = false) {
    ui.sendError.textContent = text;
    ui.sendError.classList.toggle('info', info);
  }

  function setStatus(kind, text) {
    ui.status.textContent = text;
    ui.status.dataset.state = kind;
  }

  function send(request, context) {
    if (!s.ws || !s.connected) return false;
    const id = s.nextReq++;
    request.req_id = id;
    if (context) s.pending.set(id, context);
    s.ws.send(JSON.stringify(request));
    return true;
  }

  function onConnected() {
    send({ type: 'my_rooms' }, { kind: 'rooms' });
    send({ type: 'presence_friends_subscribe' }, { kind: 'presence' });
    send({ type: 'following_list' }, { kind: 'following' });
    for (const room of s.rooms.values()) {
      if (room.state === 'ready') catchUp(room);
      else if (room.id === s.open) loadInitial(room);
    }
  }

  // ------------------------------------------------------------------ events

  function handle(ev) {
    const ctx = ev.req_id !== undefined ? s.pending.get(ev.req_id) : undefined;
    if (ev.req_id !== undefined) s.pending.delete(ev.req_id);
    switch (ev.type) {
      case 'my_rooms':
        return onMyRooms(ev);
      case 'message':
        return addEntries(ev.room, [{ ...ev, kind: 'msg' }], true);
      case 'dm':
        return addEntries(ev.room, [{ ...ev, kind: 'dm' }], true);
      case 'system':
        return onSystem(ev);
      case 'join_ack':
        s.joinPending = false;
        s.openWhenListed = ev.room;
        if (s.rooms.has(ev.room)) openRoom(ev.room);
        return send({ type: 'my_rooms' }, { kind: 'rooms' });
      case 'leave_ack':
        return onLeft(ev.room);
      case 'history':
        return onHistory(ev, ctx);
      case 'dm_ack':
        return onDmAck(ev, ctx);
      case 'offline_dm':
        return onOfflineDm(ev);
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
        ui.friendNote.textContent = `${ev.from} now follows you.`;
        return undefined;
      case 'error':
        return onError(ev, ctx);
      default:
        return undefined;
    }
  }

  function onMyRooms(ev) {
    const listed = new Set();
    for (const info of ev.rooms_info || []) {
      listed.add(info.id);
      const room = s.rooms.get(info.id);
      if (room) {
        room.name = info.name;
        if (info.last) room.last = info.last;
      } else {
        s.rooms.set(info.id, {
          id: info.id,
          name: info.name,
          last: info.last || null,
          unread: 0,
          entries: new Map(),
          state: 'new',
          oldestReached: false,
          loadingOlder: false,
        });
      }
    }
    for (const id of [...s.rooms.keys()]) {
      if (!listed.has(id)) s.rooms.delete(id);
    }
    if (s.open && !s.rooms.has(s.open)) showRoom(null);
    if (s.openWhenListed && s.rooms.has(s.openWhenListed)) {
      const id = s.openWhenListed;
      s.openWhenListed = null;
      openRoom(id);
    }
    renderRooms();
  }

  function onSystem(ev) {
    const room = s.rooms.get(ev.room);
    const mine = ev.user === s.user;
    if (ev.event === 'joined' && mine && !room) {
      if (s.joinPending) {
        s.joinPending = false;
        s.openWhenListed = ev.room;
      }
      send({ type: 'my_rooms' }, { kind: 'rooms' });
      return;
    }
    if (ev.event === 'left' && mine) {
      onLeft(ev.room);
      return;
    }
    if (!room) return;
    // Live system events carry no id; the log entry (with its id) comes from
    // history, so the room's list stays keyed by id and never shows one twice.
    const nick = ev.user_nickname || ev.user;
    room.last = { kind: 'system', from: 'system', text: `${nick} ${ev.event}`, ts: ev.ts };
    if (room.state === 'ready') catchUp(room);
    renderRooms();
  }

  function onLeft(roomId) {
    s.rooms.delete(roomId);
    if (s.open === roomId) showRoom(null);
    renderRooms();
  }

  function onError(ev, ctx) {
    const text = ERRORS[ev.code] || ev.detail || ev.code;
    const where = (ctx && ctx.place) || 'send';
    if (where === 'room') ui.roomError.textContent = text;
    else if (where === 'friend') ui.friendNote.textContent = text;
    else composerNote(text);
    if (ctx && ctx.kind === 'join') s.joinPending = false;
    if (ctx && ctx.text && !ui.input.value) ui.input.value = ctx.text;
    if (ctx && ctx.room) {
      const room = s.rooms.get(ctx.room);
      if (room && ctx.kind === 'older') room.loadingOlder = false;
      if (room && ctx.kind === 'initial') room.state = 'new';
    }
  }

  function onDmAck(ev, ctx) {
    const status = ev.status;
    if (status === 'DELIVERED' || status === 'QUEUED') {
      if (status === 'QUEUED') composerNote(`${ev.to} is offline: they will get it when they connect.`, true);
      const room = s.rooms.get(ev.room);
      // The own copy of a DM has no event; history brings it, with its id.
      if (room && room.state === 'ready') catchUp(room);
      return;
    }
    const why = DM_STATUS[status];
    composerNote(typeof why === 'function' ? why(ev.to) : why || status);
    if (ctx && ctx.text && !ui.input.value) ui.input.value = ctx.text;
  }

  function onOfflineDm(ev) {
    const li = document.createElement('li');
    li.dataset.testid = 'offline-dm';
    li.dataset.from = ev.from;
    li.dataset.room = ev.room;
    const head = document.createElement('div');
    head.className = 'meta';
    const who = document.createElement('strong');
    who.textContent = ev.from_nickname || ev.from;
    head.append(who, ' ', timeElement(ev.at || ev.ts));
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
    ui.offlineDms.append(li);
    ui.offlineBox.hidden = false;
    const room = s.rooms.get(ev.room);
    if (room && s.open !== ev.room) {
      room.unread += 1;
      renderRooms();
    }
  }

  function onFollowAck(ev) {
    const messages = {
      FOLLOWED: `You follow ${ev.to}.`,
      ALREADY: `You already follow ${ev.to}.`,
      SELF: 'You cannot follow yourself.',
      NOT_REGISTERED: `There is no user ${ev.to}.`,
      UNFOLLOWED: `You no longer follow ${ev.to}.`,
      NOT_FOLLOWING: `You did not follow ${ev.to}.`,
    };
    ui.friendNote.textContent = messages[ev.status] || ev.status;
    send({ type: 'following_list' }, { kind: 'following' });
    send({ type: 'get_online_friends' }, { kind: 'presence' });
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
    if (room.state !== 'new') return;
    if (send({ type: 'history', room_id: room.id, limit: PAGE }, { kind: 'initial', room: room.id, place: 'send' })) {
      room.state = 'loading';
    }
  }

  function loadOlder(room) {
    if (room.state !== 'ready' || room.oldestReached || room.loadingOlder) return;
    const before = oldestId(room);
    if (!before) return;
    if (send({ type: 'history', room_id: room.id, limit: PAGE, before_id: before }, { kind: 'older', room: room.id, place: 'send' })) {
      room.loadingOlder = true;
    }
  }

  /** Everything after the newest entry shown; when a page comes back full there
   * may be more between, so the next request pages back from its oldest entry. */
  function catchUp(room, after = newestId(room), before = undefined) {
    const req = { type: 'history', room_id: room.id, limit: CATCHUP, after_id: after };
    if (before !== undefined) req.before_id = before;
    send(req, { kind: 'catchup', room: room.id, after, place: 'send' });
  }

  function onHistory(ev, ctx) {
    const room = s.rooms.get(ev.room);
    if (!room || !ctx) return;
    const items = ev.items || [];
    if (ctx.kind === 'initial') {
      room.state = 'ready';
      if (items.length < PAGE) room.oldestReached = true;
      addEntries(room.id, items, false);
      if (s.open === room.id) scrollToEnd();
    } else if (ctx.kind === 'older') {
      room.loadingOlder = false;
      if (items.length < PAGE) room.oldestReached = true;
      const list = ui.messages;
      const fromBottom = list.scrollHeight - list.scrollTop;
      addEntries(room.id, items, false);
      if (s.open === room.id) list.scrollTop = list.scrollHeight - fromBottom;
    } else if (ctx.kind === 'catchup') {
      addEntries(room.id, items, s.open !== room.id);
      if (items.length === CATCHUP && items[0].id > ctx.after + 1) {
        catchUp(room, ctx.after, items[0].id);
      }
    }
    updateOlderButton();
  }

  // ----------------------------------------------------------------- entries

  /** Adds entries (deduplicated by id) to a room; `live` ones count as unread
   * when the room is not open. */
  function addEntries(roomId, items, live) {
    const room = s.rooms.get(roomId);
    if (!room) {
      if (live) send({ type: 'my_rooms' }, { kind: 'rooms' });
      return;
    }
    const keep = room.state === 'ready' || room.state === 'loading';
    const isOpen = s.open === roomId;
    const list = ui.messages;
    const nearEnd = list.scrollHeight - list.scrollTop - list.clientHeight < 80;
    const newestBefore = newestId(room);
    let newer = false;
    let changed = false;
    for (const item of items) {
      if (typeof item.id !== 'number') continue;
      if (room.entries.has(item.id)) continue;
      if (item.kind !== 'dm' && (!room.last || !room.lastId || item.id > room.lastId)) {
        room.last = { kind: item.kind, from: item.from, text: item.text, ts: item.ts };
        room.lastId = item.id;
        changed = true;
      }
      if (live && !isOpen && item.kind !== 'system' && item.from !== s.user) {
        room.unread += 1;
        changed = true;
      }
      if (keep) {
        room.entries.set(item.id, item);
        if (isOpen) insertMessage(item);
        if (item.id > newestBefore) newer = true;
      }
    }
    // Follow the conversation when the reader is at its end; never when older
    // entries come in above.
    if (isOpen && newer && nearEnd) scrollToEnd();
    if (changed) renderRooms();
  }

  function insertMessage(item) {
    const node = messageElement(item);
    const list = ui.messages;
    let after = list.lastElementChild;
    while (after && Number(after.dataset.id) > item.id) after = after.previousElementSibling;
    if (after) after.after(node);
    else list.prepend(node);
  }

  function messageElement(item) {
    const li = document.createElement('li');
    li.dataset.testid = 'message';
    li.dataset.id = String(item.id);
    li.dataset.from = item.from;
    li.dataset.kind = item.kind;
    li.className = `msg kind-${item.kind}`;
    if (item.kind !== 'system' && item.from === s.user) li.classList.add('mine');
    if (item.kind === 'system') {
      const text = document.createElement('span');
      text.className = 'text';
      text.textContent = item.text;
      li.append(text, ' ', timeElement(item.ts));
      return li;
    }
    const meta = document.createElement('div');
    meta.className = 'meta';
    const who = document.createElement('strong');
    who.textContent = item.from_nickname || item.from;
    who.title = item.from;
    meta.append(who);
    if (item.kind === 'dm') {
      const tag = document.createElement('span');
      tag.className = 'dm-tag';
      tag.textContent = item.from === s.user ? `DM to ${item.to}` : 'DM to you';
      meta.append(' ', tag);
    }
    meta.append(' ', timeElement(item.ts));
    const body = document.createElement('div');
    body.className = 'text';
    body.textContent = item.text;
    li.append(meta, body);
    return li;
  }

  function parseTs(ts) {
    // Microseconds are more than Date needs; keep milliseconds.
    return new Date(String(ts).replace(/(\.\d{3})\d+/, '$1'));
  }

  function timeElement(ts) {
    const t = document.createElement('time');
    const d = parseTs(ts);
    if (Number.isNaN(d.getTime())) return t;
    t.dateTime = d.toISOString();
    t.title = d.toLocaleString();
    const today = new Date().toDateString() === d.toDateString();
    t.textContent = today
      ? d.toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' })
      : d.toLocaleString([], { month: 'short', day: 'numeric', hour: '2-digit', minute: '2-digit' });
    return t;
  }

  function scrollToEnd() {
    ui.messages.scrollTop = ui.messages.scrollHeight;
  }

  // ------------------------------------------------------------------- rooms

  function openRoom(id) {
    const room = s.rooms.get(id);
    if (!room) return;
    s.open = id;
    room.unread = 0;
    showRoom(room);
    loadInitial(room);
    renderRooms();
    document.body.classList.remove('sidebar-open');
    ui.menu.setAttribute('aria-expanded', 'false');
    ui.input.focus();
  }

  function showRoom(room) {
    ui.messages.replaceChildren();
    composerNote('');
    document.body.classList.toggle('no-room', !room);
    ui.composer.hidden = !room;
    if (!room) {
      s.open = null;
      ui.roomTitle.textContent = 'No room open';
      ui.leave.hidden = true;
      ui.roomHint.hidden = false;
      ui.loadOlder.hidden = true;
      return;
    }
    ui.roomTitle.textContent = room.name;
    ui.leave.hidden = false;
    ui.roomHint.hidden = true;
    const frag = document.createDocumentFragment();
    for (const item of [...room.entries.values()].sort((a, b) => a.id - b.id)) {
      frag.append(messageElement(item));
    }
    ui.messages.append(frag);
    scrollToEnd();
    updateOlderButton();
  }

  function updateOlderButton() {
    const room = s.open && s.rooms.get(s.open);
    ui.loadOlder.hidden = !room || room.state !== 'ready' || room.oldestReached;
  }

  function renderRooms() {
    const focused = document.activeElement && document.activeElement.closest('[data-room-id]');
    const focusedId = focused ? focused.dataset.roomId : null;
    const rooms = [...s.rooms.values()].sort((a, b) => {
      const ta = a.last ? String(a.last.ts) : '';
      const tb = b.last ? String(b.last.ts) : '';
      if (ta !== tb) return ta < tb ? 1 : -1;
      return a.name.localeCompare(b.name);
    });
    const frag = document.createDocumentFragment();
    let unreadTotal = 0;
    for (const room of rooms) {
      unreadTotal += room.unread;
      const li = document.createElement('li');
      li.dataset.testid = 'room-item';
      li.dataset.roomId = room.id;
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
      if (room.unread > 0 && room.id !== s.open) {
        const badge = document.createElement('span');
        badge.className = 'badge';
        badge.dataset.testid = 'unread';
        badge.textContent = String(room.unread);
        badge.setAttribute('aria-label', `${room.unread} unread`);
        top.append(badge);
      }
      const preview = document.createElement('span');
      preview.className = 'preview';
      preview.dataset.testid = 'room-preview';
      if (room.last) {
        preview.textContent = room.last.kind === 'system' ? room.last.text : `${room.last.from}: ${room.last.text}`;
      } else {
        preview.textContent = 'No messages yet';
      }
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
        const btn = document.createElement('button');
        btn.type = 'button';
        btn.className = 'link';
        btn.dataset.testid = 'friend-unfollow';
        btn.textContent = 'Unfollow';
        btn.setAttribute('aria-label', `Unfollow ${f.username}`);
        btn.addEventListener('click', () => {
          send({ type: 'friend_unfollow', to: f.username }, { kind: 'unfollow', place: 'friend' });
        });
        li.append(name, ' ', btn);
        return li;
      }),
    );
  }

  // ------------------------------------------------------------------ sending

  function sendMessage() {
    composerNote('');
    const text = ui.input.value;
    if (!text.trim()) return;
    if (!s.open) {
      composerNote('Open a room first.');
      return;
    }
    if (!s.connected) {
      composerNote('Not connected: the message was not sent.');
      return;
    }
    const to = ui.dmTo.value.trim();
    const ok = to
      ? send({ type: 'room_dm', room_id: s.open, to, text }, { kind: 'dm', room: s.open, place: 'send', text })
      : send({ type: 'msg', room_id: s.open, text }, { kind: 'msg', room: s.open, place: 'send', text });
    if (ok) ui.input.value = '';
  }

  // ------------------------------------------------------------------- wiring

  ui.loginForm.addEventListener('submit', (e) => {
    e.preventDefault();
    authenticate(false);
  });
  ui.registerSubmit.addEventListener('click', () => authenticate(true));
  ui.logout.addEventListener('click', () => endSession(''));

  ui.joinForm.addEventListener('submit', (e) => {
    e.preventDefault();
    ui.roomError.textContent = '';
    const name = ui.roomName.value.trim();
    if (!name) {
      ui.roomError.textContent = ERRORS.ROOM_ID_OR_NAME_REQUIRED;
      return;
    }
    if (!s.connected) {
      ui.roomError.textContent = 'Not connected.';
      return;
    }
    s.joinPending = true;
    send({ type: 'join', room: name }, { kind: 'join', place: 'room' });
    ui.roomName.value = '';
  });

  ui.leave.addEventListener('click', () => {
    if (s.open) send({ type: 'leave', room_id: s.open }, { kind: 'leave', place: 'room' });
  });

  ui.friendForm.addEventListener('submit', (e) => {
    e.preventDefault();
    const to = ui.friendName.value.trim();
    if (!to) {
      ui.friendNote.textContent = ERRORS.FOLLOW_TO_REQUIRED;
      return;
    }
    if (send({ type: 'friend_follow', to }, { kind: 'follow', place: 'friend' })) ui.friendName.value = '';
  });

  ui.composer.addEventListener('submit', (e) => {
    e.preventDefault();
    sendMessage();
  });

  ui.input.addEventListener('keydown', (e) => {
    if (e.key !== 'Enter' || e.shiftKey) return;
    // Enter that confirms an IME composition (Korean, Japanese, …) is not a send;
    // keyCode 229 covers browsers that report the composition only that way.
    if (e.isComposing || e.keyCode === 229) return;
    e.preventDefault();
    sendMessage();
  });

  ui.messages.addEventListener('scroll', () => {
    const room = s.open && s.rooms.get(s.open);
    if (room && ui.messages.scrollTop < 60) loadOlder(room);
  });
  ui.loadOlder.addEventListener('click', () => {
    const room = s.open && s.rooms.get(s.open);
    if (room) loadOlder(room);
  });

  ui.menu.addEventListener('click', () => {
    const open = document.body.classList.toggle('sidebar-open');
    ui.menu.setAttribute('aria-expanded', String(open));
  });

  window.addEventListener('online', () => {
    if (!s.stopped && !s.ws && !s.connecting) connect();
  });

  // A session kept from an earlier visit.
  let saved = null;
  try {
    saved = JSON.parse(localStorage.getItem(SESSION_KEY) || 'null');
  } catch (_) {
    saved = null;
  }
  if (saved && typeof saved.token === 'string' && typeof saved.user === 'string') {
    if (Date.now() < tokenExpiry(saved.token)) startSession(saved.token, saved.user);
    else endSession('Your session has expired: please log in again.');
  } else {
    ui.username.focus();
  }
})();
