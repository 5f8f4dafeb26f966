//! A server API request (`/api/v1/`) while it waits for the database, as
//! plain data: first for its key to be checked, then for each job of its
//! operation. `handlers::http::api` parses and answers it; a connection's
//! pending HTTP request holds it (see `conn::PendingHttp::Api`).

use std::net::IpAddr;

use crate::http::Request;

/// One API request between its jobs.
#[derive(Debug)]
pub struct ApiCall {
    pub keep_alive: bool,
    pub step: ApiStep,
}

/// Where an API request stands.
#[derive(Debug)]
pub enum ApiStep {
    /// Its key (this SHA-256) is being checked: the request itself waits,
    /// unparsed. `addr`: the client address a bad key counts against.
    Key {
        req: Request,
        hash: [u8; 32],
        addr: IpAddr,
    },
    /// Its operation, past the key and its budget.
    Op(ApiOp),
}

/// What an API request asks, parsed and checked as far as the loop can.
#[derive(Debug)]
pub enum ApiOp {
    /// `POST /api/v1/users`. `password`: the one given, or a random one
    /// nobody is told, so that the account signs in through the API only.
    /// `hashing`: a hashing slot of the registration budget is held.
    CreateUser {
        username: String,
        nickname: String,
        password: String,
        hashing: bool,
    },
    /// `POST /api/v1/tokens`: `minutes` the token lasts.
    Token { username: String, minutes: u64 },
    /// `POST /api/v1/rooms`; with an `owner`, once their nickname is read.
    CreateRoom {
        name: String,
        private: bool,
        topic: Option<String>,
        owner: Option<String>,
    },
    /// `PUT /api/v1/rooms/{room}/members/{user}`: once the user's nickname
    /// is read, a join by the application.
    AddMember { room: String, user: String },
    /// `DELETE /api/v1/rooms/{room}/members/{user}` (`ban`: `?ban=true`).
    RemoveMember {
        room: String,
        user: String,
        ban: bool,
    },
    /// `POST /api/v1/rooms/{room}/messages`: `from` (once their nickname is
    /// read) or, without one, an announcement (once the room is found).
    Post {
        room: String,
        from: Option<String>,
        text: String,
        client_id: Option<String>,
    },
    /// `GET /api/v1/rooms/{room}/history`.
    History {
        room: String,
        limit: i64,
        before_id: Option<i64>,
        after_id: Option<i64>,
    },
    /// `GET /api/v1/rooms/{room}/members`.
    Members { room: String },
    /// `GET /api/v1/presence?users=`: in a cluster, read from the presence
    /// rows (a node alone answers from memory at once).
    Presence { users: Vec<String> },
    /// `POST /api/v1/users/{user}/disconnect`: the other nodes are being
    /// told; `here` sockets closed on this node.
    Disconnect { user: String, here: usize },
    /// `POST /api/v1/users/{user}/revoke`.
    Revoke { user: String },
}
