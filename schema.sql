-- Klav database schema.
--
-- Applied by `klav` at every start (it is embedded in the binary). Every statement
-- is idempotent: on an empty database it creates everything; on a database written
-- by the previous (Python) server it upgrades the same five tables in place without
-- losing a row; on a Klav database it changes nothing.
--
-- The five tables `users`, `rooms`, `room_members`, `chat_logs` and `follows` and
-- their columns are a compatibility surface shared with the old server: columns may
-- be added or widened, never renamed or dropped.

-- Serialise concurrent starts (two servers on one database) while the schema is
-- applied; released at the end of the transaction that runs this file.
SELECT pg_advisory_xact_lock(7283910);

CREATE TABLE IF NOT EXISTS users (
    username    varchar(100) PRIMARY KEY,
    password    varchar(255) NOT NULL,
    nickname    varchar(100) DEFAULT '',
    extra       text DEFAULT '',
    created_at  timestamptz DEFAULT now()
);

CREATE TABLE IF NOT EXISTS rooms (
    id                 varchar(20) PRIMARY KEY,
    name               varchar(255) NOT NULL,
    created_at         timestamptz DEFAULT now(),
    last_message_text  text,
    last_message_from  varchar(100),
    last_message_kind  varchar(20),
    last_message_ts    timestamptz
);

CREATE TABLE IF NOT EXISTS room_members (
    id         serial PRIMARY KEY,
    room_id    varchar(20) NOT NULL REFERENCES rooms(id) ON DELETE CASCADE,
    username   varchar(100) NOT NULL REFERENCES users(username) ON DELETE CASCADE,
    joined_at  timestamptz DEFAULT now(),
    UNIQUE (room_id, username)
);

CREATE TABLE IF NOT EXISTS chat_logs (
    id             bigserial PRIMARY KEY,
    room_id        varchar(20) NOT NULL REFERENCES rooms(id) ON DELETE CASCADE,
    ts             timestamptz DEFAULT now(),
    kind           varchar(20),
    from_user      varchar(100),
    from_nickname  varchar(100),
    to_user        varchar(100),
    text           text
);

CREATE TABLE IF NOT EXISTS follows (
    id                 serial PRIMARY KEY,
    follower_username  varchar(100) NOT NULL REFERENCES users(username) ON DELETE CASCADE,
    followee_username  varchar(100) NOT NULL REFERENCES users(username) ON DELETE CASCADE,
    created_at         timestamptz DEFAULT now(),
    UNIQUE (follower_username, followee_username)
);

-- The old server set timestamps from Python, so its tables may lack defaults.
ALTER TABLE users        ALTER COLUMN created_at SET DEFAULT now();
ALTER TABLE rooms        ALTER COLUMN created_at SET DEFAULT now();
ALTER TABLE room_members ALTER COLUMN joined_at  SET DEFAULT now();
ALTER TABLE chat_logs    ALTER COLUMN ts         SET DEFAULT now();
ALTER TABLE follows      ALTER COLUMN created_at SET DEFAULT now();

-- The old server's chat_logs.id was a 32-bit serial; a busy server outgrows it.
-- Widening rewrites the table once, so it only runs while the column is still int4.
DO $$
BEGIN
    IF (SELECT data_type FROM information_schema.columns
        WHERE table_schema = current_schema() AND table_name = 'chat_logs'
          AND column_name = 'id') = 'integer' THEN
        ALTER TABLE chat_logs ALTER COLUMN id TYPE bigint;
        IF pg_get_serial_sequence('chat_logs', 'id') IS NOT NULL THEN
            EXECUTE format('ALTER SEQUENCE %s AS bigint',
                           pg_get_serial_sequence('chat_logs', 'id'));
        END IF;
    END IF;
END
$$;

-- Indexes the protocol's queries use. The old server's own (room name, room_id+ts,
-- members by username, follows by followee) are recreated under their usual names
-- when missing; ours are added beside them.
CREATE INDEX IF NOT EXISTS ix_rooms_name ON rooms (name);
CREATE INDEX IF NOT EXISTS ix_room_members_username ON room_members (username);
CREATE INDEX IF NOT EXISTS ix_chat_logs_room_ts ON chat_logs (room_id, ts);
CREATE INDEX IF NOT EXISTS ix_follows_followee ON follows (followee_username);
-- history pages by id (the cursor) within a room, newest first.
CREATE INDEX IF NOT EXISTS klav_chat_logs_room_id ON chat_logs (room_id, id);
-- join by name picks the oldest room with that name.
CREATE INDEX IF NOT EXISTS klav_rooms_name_created ON rooms (name, created_at, id);

-- Direct messages waiting for an offline recipient (the old server kept these in
-- memory and lost them on restart). At most 100 rows per recipient are kept, at
-- most 20 of them from one sender (see src/db/offline_queue.rs for which go). A
-- row is deleted once written to a recipient socket.
CREATE TABLE IF NOT EXISTS klav_offline_dms (
    id             bigserial PRIMARY KEY,
    recipient      varchar(100) NOT NULL REFERENCES users(username) ON DELETE CASCADE,
    room_id        varchar(20) NOT NULL REFERENCES rooms(id) ON DELETE CASCADE,
    log_id         bigint,
    from_user      varchar(100) NOT NULL,
    from_nickname  varchar(100) NOT NULL,
    text           text NOT NULL,
    sent_at        timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS klav_offline_dms_recipient ON klav_offline_dms (recipient, id);

-- Protocol v2 (see the README's "Protocol v2" section).
-- client_id: the sender's idempotency key. The partial unique index makes a
-- retried send a no-op in the same INSERT (ON CONFLICT DO NOTHING): no lookup on
-- the message path, and it holds across restarts and across servers. Once the
-- entry is pruned, the key may be used again.
ALTER TABLE chat_logs ADD COLUMN IF NOT EXISTS client_id varchar(64);
ALTER TABLE chat_logs ADD COLUMN IF NOT EXISTS edited_at timestamptz;
-- Deleted entries stay as tombstones (text emptied) so cursors and counts hold.
ALTER TABLE chat_logs ADD COLUMN IF NOT EXISTS deleted boolean NOT NULL DEFAULT false;
CREATE UNIQUE INDEX IF NOT EXISTS klav_chat_logs_client_id
    ON chat_logs (from_user, client_id) WHERE client_id IS NOT NULL;
-- The entry rooms.last_message_* shows, so that my_rooms can show it edited or
-- deleted; and the newest id retention has pruned, so that resume can tell a
-- cursor whose successors are gone.
ALTER TABLE rooms ADD COLUMN IF NOT EXISTS last_message_id bigint;
ALTER TABLE rooms ADD COLUMN IF NOT EXISTS klav_pruned_upto bigint;

-- Read markers: how far each user has read each room (only moves forward).
CREATE TABLE IF NOT EXISTS klav_read_markers (
    username      varchar(100) NOT NULL REFERENCES users(username) ON DELETE CASCADE,
    room_id       varchar(20) NOT NULL REFERENCES rooms(id) ON DELETE CASCADE,
    last_read_id  bigint NOT NULL,
    updated_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (username, room_id)
);

-- Cluster (see the README's "Running a cluster").
-- The newest entry of any kind (messages, system entries, DMs) in each room. Every
-- transaction that adds entries to a room locks the room's row first and moves
-- this forward, so that within a room ids commit in order, and each batch of
-- entries names the entry before it: a node that receives a batch whose
-- predecessor it has not seen knows it missed something and reads it back.
ALTER TABLE rooms ADD COLUMN IF NOT EXISTS klav_last_entry_id bigint;
-- Live nodes: each beats every few seconds; one whose heartbeat is older than
-- KLAV_NODE_TIMEOUT_SECS is dead, and any live node removes it and its presence.
-- `incarnation` changes at every start, so a restarted node is a new life.
CREATE TABLE IF NOT EXISTS klav_nodes (
    name          varchar(64) PRIMARY KEY,
    incarnation   bigint NOT NULL,
    started_at    timestamptz NOT NULL DEFAULT now(),
    heartbeat_at  timestamptz NOT NULL DEFAULT now()
);
-- Open connections per user per node: a user is online while any row exists.
CREATE TABLE IF NOT EXISTS klav_presence (
    node      varchar(64) NOT NULL,
    username  varchar(100) NOT NULL,
    conns     integer NOT NULL,
    PRIMARY KEY (username, node)
);
CREATE INDEX IF NOT EXISTS klav_presence_node ON klav_presence (node);
-- An offline DM handed to a connection is claimed by its node (name:incarnation),
-- so that two nodes opening the recipient's connections at once do not both
-- deliver it; a claim by a node that is gone may be taken again.
ALTER TABLE klav_offline_dms ADD COLUMN IF NOT EXISTS klav_claimed_by varchar(100);

-- Offline DMs dropped from each recipient's full queue, until their next connection is told.
CREATE TABLE IF NOT EXISTS klav_offline_dropped (
    recipient        varchar(100) PRIMARY KEY REFERENCES users(username) ON DELETE CASCADE,
    dropped          bigint NOT NULL DEFAULT 0,
    klav_claimed_by  varchar(100)
);

-- Accounts: case-insensitive username lookup (not unique: old rows may differ only in case); WebSocket tickets (SHA-256 only).
CREATE INDEX IF NOT EXISTS klav_users_lower_username ON users (lower(username));
CREATE TABLE IF NOT EXISTS klav_ws_tickets (
    hash           bytea PRIMARY KEY,
    username       varchar(100) NOT NULL REFERENCES users(username) ON DELETE CASCADE,
    token_expires  timestamptz NOT NULL,
    auth_time      timestamptz NOT NULL,
    expires_at     timestamptz NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS klav_ws_tickets_user ON klav_ws_tickets (username, created_at);
CREATE INDEX IF NOT EXISTS klav_ws_tickets_expires ON klav_ws_tickets (expires_at);

-- Blocks (v3): while `blocker` blocks `blocked`, the blocked user's DMs, follows and
-- invitations to the blocker are refused and the blocker's presence is hidden from them.
CREATE TABLE IF NOT EXISTS klav_blocks (
    blocker     varchar(100) NOT NULL REFERENCES users(username) ON DELETE CASCADE,
    blocked     varchar(100) NOT NULL REFERENCES users(username) ON DELETE CASCADE,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (blocker, blocked)
);
CREATE INDEX IF NOT EXISTS klav_blocks_blocked ON klav_blocks (blocked);

-- Rooms with owners (v3). Columns added to the old tables (a server that does not
-- know them writes rows that still mean something: a room without an owner, public,
-- without a topic; a member whose role is `member`), so the old server's rows and
-- statements keep working. `klav_owner` is the room's one owner (NULL: none, as for
-- every room created before this version, or a room left empty); the owner is not
-- necessarily a member (a public room's creator by `create_room` is not).
-- `room_members.klav_role` is `admin` or `member`; a member who owns the room is
-- told apart by `rooms.klav_owner`, so ownership is stored in one place only.
ALTER TABLE rooms ADD COLUMN IF NOT EXISTS klav_owner varchar(100);
ALTER TABLE rooms ADD COLUMN IF NOT EXISTS klav_private boolean NOT NULL DEFAULT false;
ALTER TABLE rooms ADD COLUMN IF NOT EXISTS klav_topic text;
ALTER TABLE room_members ADD COLUMN IF NOT EXISTS klav_role varchar(10) NOT NULL DEFAULT 'member';
-- `join` by name matches public rooms only.
CREATE INDEX IF NOT EXISTS klav_rooms_public_name ON rooms (name, created_at, id)
    WHERE NOT klav_private;

-- Moderation delete (v3): who deleted an entry that was not theirs (the room's
-- owner or an admin); NULL for entries deleted by their author, and for all rows
-- of the old server.
ALTER TABLE chat_logs ADD COLUMN IF NOT EXISTS klav_deleted_by varchar(100);

-- Invitations to rooms (v3): open for 7 days (older ones are invisible and refused,
-- and removed by the retention tick); used up by the invitee's join, removed by a
-- decline, a kick or a ban. `invited_by` is not a reference: the inviter's account
-- may go while the invitation stays meaningful.
CREATE TABLE IF NOT EXISTS klav_room_invites (
    room_id     varchar(20) NOT NULL REFERENCES rooms(id) ON DELETE CASCADE,
    username    varchar(100) NOT NULL REFERENCES users(username) ON DELETE CASCADE,
    invited_by  varchar(100) NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (room_id, username)
);
CREATE INDEX IF NOT EXISTS klav_room_invites_user ON klav_room_invites (username, created_at);
CREATE INDEX IF NOT EXISTS klav_room_invites_created ON klav_room_invites (created_at);

-- Bans from rooms (v3): a banned user cannot join the room (by id or by name) nor be
-- invited to it until unbanned.
CREATE TABLE IF NOT EXISTS klav_room_bans (
    room_id     varchar(20) NOT NULL REFERENCES rooms(id) ON DELETE CASCADE,
    username    varchar(100) NOT NULL REFERENCES users(username) ON DELETE CASCADE,
    banned_by   varchar(100) NOT NULL,
    reason      text,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (room_id, username)
);
-- Accounts (v3): each user's token generation. Every token carries the generation
-- it was issued in (tokens without one count as 0); revoking a user's tokens (a
-- password change, logout_all, deletion) moves it on, and older tokens are refused.
-- A deleted account keeps its row (the name stays reserved), marked by klav_deleted_at.
-- A WebSocket ticket keeps the generation of the token that minted it.
ALTER TABLE users ADD COLUMN IF NOT EXISTS klav_token_gen bigint NOT NULL DEFAULT 0;
ALTER TABLE users ADD COLUMN IF NOT EXISTS klav_deleted_at timestamptz;
ALTER TABLE klav_ws_tickets ADD COLUMN IF NOT EXISTS token_gen bigint NOT NULL DEFAULT 0;

-- Server API keys: an application's backend calls /api/v1/ with one. Only the key's
-- SHA-256 is stored (keys are 32 random bytes: a slow hash adds nothing); a revoked
-- key keeps its row (and its name) so the list shows it. last_used_at moves at most
-- once a minute per key.
CREATE TABLE IF NOT EXISTS klav_api_keys (
    name          varchar(100) PRIMARY KEY,
    key_hash      bytea NOT NULL UNIQUE,
    created_at    timestamptz NOT NULL DEFAULT now(),
    last_used_at  timestamptz,
    revoked_at    timestamptz
);

-- Schema setup: the digest of the schema.sql last applied. A node whose
-- schema.sql has this digest skips setup (no table locks while other nodes run).
CREATE TABLE IF NOT EXISTS klav_schema_applied (
    singleton   boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    digest      text NOT NULL,
    applied_at  timestamptz NOT NULL DEFAULT now()
);

-- Each ordered writer's latest transaction, one row per writer process (a
-- random id; node names the node): written in the transaction itself, so that
-- a writer whose COMMIT got no answer (the connection broke, the primary
-- failed over) can read back whether it committed. Rows of writers gone for a
-- week are deleted at start.
CREATE TABLE IF NOT EXISTS klav_writer_batches (
    writer      varchar(40) PRIMARY KEY,
    node        varchar(100) NOT NULL,
    batch       bigint NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now()
);

-- Webhooks: events written in the same transaction as what they report (only when
-- KLAV_WEBHOOK_URL is set), delivered at least once by every node's delivery threads.
-- The event id sent is "evt_<id>". order_key is what delivery keeps in order: the
-- room (room events), "dm:<recipient>" (dm.queued) or "user:<name>" (user events).
-- A row is claimed (FOR UPDATE SKIP LOCKED) with a lease, claimed_until; delivered
-- rows are pruned after a day; an event still failing at give_up_at (24 hours after
-- it was written, or retried) is dead-lettered (dead_at) and stays until retried.
CREATE TABLE IF NOT EXISTS klav_webhook_outbox (
    id               bigserial PRIMARY KEY,
    type             text NOT NULL,
    room_id          varchar(20),
    order_key        text NOT NULL,
    payload          jsonb NOT NULL,
    created_at       timestamptz NOT NULL DEFAULT now(),
    attempts         integer NOT NULL DEFAULT 0,
    next_attempt_at  timestamptz NOT NULL DEFAULT now(),
    claimed_by       text,
    claimed_until    timestamptz,
    delivered_at     timestamptz,
    dead_at          timestamptz,
    last_status      integer,
    last_error       text,
    give_up_at       timestamptz NOT NULL DEFAULT now() + interval '24 hours'
);
CREATE INDEX IF NOT EXISTS klav_webhook_outbox_pending ON klav_webhook_outbox (order_key, id)
    WHERE delivered_at IS NULL AND dead_at IS NULL;
CREATE INDEX IF NOT EXISTS klav_webhook_outbox_delivered ON klav_webhook_outbox (delivered_at)
    WHERE delivered_at IS NOT NULL;
CREATE INDEX IF NOT EXISTS klav_webhook_outbox_dead ON klav_webhook_outbox (id)
    WHERE dead_at IS NOT NULL;

-- One row: the schema version this database was last brought to.
CREATE TABLE IF NOT EXISTS klav_schema_version (
    singleton   boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    version     integer NOT NULL,
    applied_at  timestamptz NOT NULL DEFAULT now()
);
INSERT INTO klav_schema_version (singleton, version) VALUES (true, 5)
ON CONFLICT (singleton) DO UPDATE SET version = GREATEST(klav_schema_version.version, 5),
                                      applied_at = now();
