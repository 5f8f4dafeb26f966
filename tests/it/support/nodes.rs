//! Several klav processes on one PostgreSQL, as a cluster runs: real processes,
//! real sockets, one fresh database per test.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::harness::*;

/// `n` nodes on one fresh database, named `n0`, `n1`, …
pub struct Nodes {
    pub db: String,
    nodes: Vec<Option<Klav>>,
    dir: PathBuf,
}

/// How long a node may be silent before the others count it gone.
const NODE_TIMEOUT_SECS: &str = "3";

fn node_env(db: &str, name: &str) -> Vec<(String, String)> {
    vec![
        ("DATABASE_URL".into(), db.into()),
        ("KLAV_NODE_NAME".into(), name.into()),
        ("KLAV_NODE_TIMEOUT_SECS".into(), NODE_TIMEOUT_SECS.into()),
        ("KLAV_RATE_PER_SEC".into(), "100000".into()),
        ("KLAV_RATE_BURST".into(), "100000".into()),
        ("KLAV_MAX_OUTPUT_BYTES".into(), (64 << 20).to_string()),
        ("KLAV_DB_WORKERS".into(), "2".into()),
    ]
}

impl Nodes {
    pub fn start(n: usize) -> Nodes {
        Nodes::on(pg().fresh_db(), n)
    }

    /// `n` nodes on the database at `db` (e.g. on a PostgreSQL of the test's own).
    pub fn on(db: String, n: usize) -> Nodes {
        let dir = std::env::temp_dir().join(format!(
            "klav-cluster-{}-{}",
            std::process::id(),
            db.rsplit('/').next().unwrap_or("x").replace('?', "_")
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let mut nodes = Nodes {
            db,
            nodes: Vec::new(),
            dir,
        };
        for i in 0..n {
            let k = nodes.spawn(i);
            nodes.nodes.push(Some(k));
        }
        nodes
    }

    fn spawn(&self, i: usize) -> Klav {
        let env = node_env(&self.db, &format!("n{i}"));
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        spawn_klav(&self.dir.join(format!("n{i}")), &env)
    }

    /// Node `i` anew, under its name, in place of the one that ran (which is
    /// dropped once the new one serves).
    pub fn respawn(&mut self, i: usize) {
        let k = self.spawn(i);
        self.nodes[i] = Some(k);
    }

    pub fn node(&self, i: usize) -> &Klav {
        self.nodes[i].as_ref().expect("node running")
    }

    pub fn node_mut(&mut self, i: usize) -> &mut Klav {
        self.nodes[i].as_mut().expect("node running")
    }

    pub fn addr(&self, i: usize) -> SocketAddr {
        self.node(i).addr
    }

    /// Waits until no node counts a connection of `user` in `klav_presence`.
    pub fn until_offline(&self, user: &str) {
        let mut db = self.db();
        eventually(WAIT, Duration::from_millis(10), || {
            let online: i64 = db
                .query_one(
                    "SELECT count(*) FROM klav_presence WHERE username = $1 AND conns > 0",
                    &[&user],
                )
                .unwrap()
                .get(0);
            if online > 0 {
                Err(format!("{user} still online"))
            } else {
                Ok(())
            }
        });
    }

    pub fn db(&self) -> postgres::Client {
        postgres::Client::connect(&self.db, postgres::NoTls).unwrap()
    }

    /// The one number a query such as `SELECT count(*) …` answers.
    pub fn count(&self, sql: &str, params: &[&(dyn postgres::types::ToSql + Sync)]) -> i64 {
        self.db().query_one(sql, params).unwrap().get(0)
    }

    /// The ids of a room's messages after `after`, as stored: the order every
    /// receiver must see.
    pub fn msg_ids(&self, room: &str, after: i64) -> Vec<i64> {
        self.db()
            .query(
                "SELECT id FROM chat_logs WHERE room_id = $1 AND kind = 'msg' AND id > $2 \
                 ORDER BY id",
                &[&room, &after],
            )
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect()
    }

    /// A user straight into the database (no password hash), and a token.
    pub fn user(&self, name: &str) -> String {
        self.db()
            .execute(
                "INSERT INTO users (username, password, nickname) VALUES ($1, 'x', $2)",
                &[&name, &format!("{name}-nick")],
            )
            .unwrap();
        token(name)
    }

    pub fn ws(&self, node: usize, token: &str) -> Ws {
        Ws::connect(self.addr(node), token)
            .unwrap_or_else(|(s, b)| panic!("upgrade refused by n{node}: {s} {b}"))
    }
}

impl Drop for Nodes {
    fn drop(&mut self) {
        self.nodes.clear();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A token as the nodes issue them.
fn token(user: &str) -> String {
    klav::auth::jwt::Tokens::new(SECRET.as_bytes(), jsonwebtoken::Algorithm::HS256, 60).issue(user)
}
