// Types for klav.js, the client library for Klav's WebSocket protocol.

export type KlavState = "online" | "connecting" | "offline";

export interface KlavOptions {
  /** The server's http(s) base, e.g. `https://chat.example.com`. */
  url: string;
  /** An access token from `POST /login`. */
  token: string;
  /** Returns a fresh token when the current one is refused or expiring. */
  tokenProvider?: () => Promise<string>;
  /** A WebSocket constructor (default: `globalThis.WebSocket`). */
  WebSocket?: any;
  /** Highest entry id already held per room: the first `resume` starts there. */
  cursors?: Record<string, number>;
  /** Reconnect delay before jitter: starts here (default 500 ms)… */
  minDelayMs?: number;
  /** …doubles up to here (default 30 000 ms)… */
  maxDelayMs?: number;
  /** …and starts over once a connection has been up this long (default 60 000 ms). */
  resetAfterMs?: number;
  /** A request without a reply for this long fails with `TIMEOUT` and the socket is replaced (default 30 000 ms). */
  requestTimeoutMs?: number;
  /** A socket not open after this long is given up and retried (default 10 000 ms). */
  connectTimeoutMs?: number;
}

/** Any server event: `type` plus the fields of docs/protocol.md. */
export interface KlavEvent {
  type: string;
  [key: string]: any;
}

export interface StateEvent {
  state: KlavState;
  retryInMs?: number;
}

/** The server's error code (or `DISCONNECTED`, `TIMEOUT`, `CLOSED`, `SESSION_REVOKED`, `ACCOUNT_DELETED`). */
export interface KlavError extends Error {
  code: string;
  reply?: KlavEvent;
}

export class Klav {
  constructor(options: KlavOptions);
  readonly url: string;
  token: string;
  state: KlavState;

  on(type: "state", fn: (event: StateEvent) => void): this;
  on(type: "token", fn: (event: { token: string }) => void): this;
  on(type: string, fn: (event: KlavEvent) => void): this;
  off(type: string, fn: (event: any) => void): this;

  connect(): Promise<void>;
  close(): void;
  /** The highest entry id seen in a room (0 when none). */
  cursor(room: string): number;

  request(obj: { type: string; [key: string]: any }): Promise<KlavEvent>;
  send(roomId: string, text: string, options?: { to?: string; clientId?: string }): Promise<KlavEvent>;

  /** Resolves with the own `system` `joined` event, or `join_ack` `ALREADY`. */
  join(room: string): Promise<KlavEvent>;
  /** The user the current token names (its `sub`). */
  username(): string | null;
  createRoom(name: string, options?: { private?: boolean; topic?: string }): Promise<KlavEvent>;
  leave(roomId: string): Promise<KlavEvent>;
  history(
    roomId: string,
    options?: { limit?: number; before?: string; after?: string; before_id?: number; after_id?: number },
  ): Promise<KlavEvent>;
  members(roomId: string): Promise<KlavEvent>;
  myRooms(): Promise<KlavEvent>;
  /** No reply; false when not online. */
  typing(roomId: string): boolean;
  edit(id: number, text: string): Promise<KlavEvent>;
  delete(id: number): Promise<KlavEvent>;
  read(roomId: string, id: number): Promise<KlavEvent>;
  roomInfo(roomId: string): Promise<KlavEvent>;
  roomUpdate(roomId: string, changes: { name?: string; topic?: string; private?: boolean }): Promise<KlavEvent>;
  setRole(roomId: string, user: string, role: "admin" | "member"): Promise<KlavEvent>;
  transferOwner(roomId: string, user: string): Promise<KlavEvent>;
  invite(roomId: string, user: string): Promise<KlavEvent>;
  myInvites(): Promise<KlavEvent>;
  declineInvite(roomId: string): Promise<KlavEvent>;
  kick(roomId: string, user: string, reason?: string): Promise<KlavEvent>;
  ban(roomId: string, user: string, reason?: string): Promise<KlavEvent>;
  unban(roomId: string, user: string): Promise<KlavEvent>;
  roomBans(roomId: string): Promise<KlavEvent>;
  block(user: string): Promise<KlavEvent>;
  unblock(user: string): Promise<KlavEvent>;
  blockedList(): Promise<KlavEvent>;
  watchMembers(roomId: string): Promise<KlavEvent>;
  unwatchMembers(roomId: string): Promise<KlavEvent>;
}
