//! Several server nodes (`--addr a,b,c`): Klav running as a cluster, every node on
//! its own address and all of them on one database, a client free to connect to
//! any. Here is which connection goes to which node, so that the traffic the bench
//! checks has to cross nodes, and the table of destination addresses per node.
//!
//! - `chat` / `fanout`: member `i` of every room goes to node `i mod N`, so a room of
//!   at least N members has members on every node; its senders (members
//!   `0..senders`) are spread the same way.
//! - `presence`: every follower follows every followed user, so the only way for
//!   each event to cross nodes is for the followed users to share one node (node 0)
//!   and the followers to be spread over the others (with one node, everything is
//!   on it).
//! - `connect`, `history`, `login`: connection `i` goes to node `i mod N`.
//! - HTTP setup (`/register`, `/login` for tokens) and room creation go to node 0.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;

/// Splits `--addr`: one address or a comma-separated list. Blanks around entries
/// are ignored; an empty entry is an error.
pub fn parse_addr_list(s: &str) -> Result<Vec<String>, String> {
    let list: Vec<String> = s.split(',').map(|a| a.trim().to_string()).collect();
    if list.iter().any(String::is_empty) {
        return Err(format!(
            "--addr {s:?}: expected HOST:PORT or a comma-separated list of them"
        ));
    }
    Ok(list)
}

/// The node of member `i` of a room (or of the one room of `fanout`).
pub(crate) fn member_node(i: usize, nodes: usize) -> usize {
    i % nodes.max(1)
}

/// The node of connection `i` in scenarios without rooms (`connect`, `history`,
/// `login`): round-robin.
pub(crate) fn round_robin(i: usize, nodes: usize) -> usize {
    i % nodes.max(1)
}

/// `presence`: the node of every followed user.
pub(crate) fn presence_target_node(_target: usize, _nodes: usize) -> usize {
    0
}

/// `presence`: the node of follower `f`: round-robin over every node but the
/// followed users' one (node 0), when there is another.
pub(crate) fn presence_follower_node(f: usize, nodes: usize) -> usize {
    if nodes <= 1 {
        0
    } else {
        1 + f % (nodes - 1)
    }
}

/// One server node as given on the command line.
#[derive(Debug, Clone)]
pub(crate) struct Node {
    /// The address as given (`127.0.0.1:5001`): the `Host` header and the report's
    /// name of the node.
    pub name: String,
    /// What it resolved to.
    pub addr: SocketAddr,
}

/// Where WebSockets go: for every node, its address and, with `--dest-addrs D` on
/// loopback, the next D-1 loopback addresses on the same port (more ephemeral ports).
/// Connections are queued by a flat index into this table ([`Dests::pick`]).
#[derive(Debug, Clone)]
pub(crate) struct Dests {
    addrs: Vec<SocketAddr>,
    /// `Host` header for each entry: its node's name.
    hosts: Vec<Arc<str>>,
    /// Each node's entries: `starts[n]..starts[n + 1]`.
    starts: Vec<usize>,
}

impl Dests {
    /// `per_node` destination addresses for every node (at least one).
    pub fn new(nodes: &[Node], per_node: usize) -> Dests {
        let mut addrs = Vec::new();
        let mut hosts = Vec::new();
        let mut starts = vec![0];
        for node in nodes {
            let host: Arc<str> = node.name.as_str().into();
            for a in spread_loopback(node.addr, per_node.max(1)) {
                addrs.push(a);
                hosts.push(host.clone());
            }
            starts.push(addrs.len());
        }
        Dests {
            addrs,
            hosts,
            starts,
        }
    }

    /// The flat index of the `i`-th destination of `node` (taken modulo its count).
    pub fn pick(&self, node: usize, i: usize) -> usize {
        let n = node % self.nodes().max(1);
        let (from, to) = (self.starts[n], self.starts[n + 1]);
        from + i % (to - from).max(1)
    }

    /// The address and `Host` header of a flat index (taken modulo the table).
    pub fn get(&self, idx: usize) -> (SocketAddr, Arc<str>) {
        let i = idx % self.addrs.len();
        (self.addrs[i], self.hosts[i].clone())
    }

    pub fn nodes(&self) -> usize {
        self.starts.len() - 1
    }

    /// Every destination address, node after node.
    pub fn addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }
}

/// `n` consecutive loopback addresses from `addr` (same port), for more
/// ephemeral ports than one address pair has; other addresses as they are.
pub(crate) fn spread_loopback(addr: SocketAddr, n: usize) -> Vec<SocketAddr> {
    match addr.ip() {
        IpAddr::V4(ip) if ip.is_loopback() && n > 1 => {
            let first = u32::from(ip);
            // Stay inside 127.0.0.0/8 and skip .0 and .255 host parts.
            let mut out = Vec::with_capacity(n);
            let mut cur = first;
            while out.len() < n && cur < u32::from(Ipv4Addr::new(127, 255, 255, 255)) {
                let last = cur & 0xff;
                if last != 0 && last != 255 {
                    out.push(SocketAddr::new(
                        IpAddr::V4(Ipv4Addr::from(cur)),
                        addr.port(),
                    ));
                }
                cur += 1;
            }
            out
        }
        _ => vec![addr],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(s: &str) -> Node {
        Node {
            name: s.to_string(),
            addr: s.parse().unwrap(),
        }
    }

    #[test]
    fn addr_lists_split_on_commas() {
        assert_eq!(
            parse_addr_list("127.0.0.1:5000").unwrap(),
            vec!["127.0.0.1:5000"]
        );
        assert_eq!(
            parse_addr_list("127.0.0.1:5001, 127.0.0.1:5002,127.0.0.1:5003").unwrap(),
            vec!["127.0.0.1:5001", "127.0.0.1:5002", "127.0.0.1:5003"]
        );
        for bad in ["", "a:1,", ",a:1", "a:1,,b:2"] {
            assert!(parse_addr_list(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn member_i_goes_to_node_i_mod_n() {
        for nodes in 1..=4 {
            for i in 0..20 {
                assert_eq!(member_node(i, nodes), i % nodes);
            }
        }
        // 10 members over 3 nodes: every node has members of the room (4, 3, 3).
        let mut per_node = [0; 3];
        for i in 0..10 {
            per_node[member_node(i, 3)] += 1;
        }
        assert_eq!(per_node, [4, 3, 3]);
        // Fewer members than nodes: one per node, no node twice.
        let used: Vec<usize> = (0..2).map(|i| member_node(i, 3)).collect();
        assert_eq!(used, vec![0, 1]);
    }

    #[test]
    fn fanout_receivers_and_senders_are_spread_evenly() {
        // One room of 1000 members, 4 senders, 3 nodes: receivers differ by at most
        // one per node, and so do senders.
        let (members, senders, nodes) = (1000, 4, 3);
        let mut recv = vec![0usize; nodes];
        let mut send = vec![0usize; nodes];
        for i in 0..members {
            recv[member_node(i, nodes)] += 1;
            if i < senders {
                send[member_node(i, nodes)] += 1;
            }
        }
        assert_eq!(recv, vec![334, 333, 333]);
        assert_eq!(send, vec![2, 1, 1]);
        assert!(recv.iter().max().unwrap() - recv.iter().min().unwrap() <= 1);
        assert!(send.iter().max().unwrap() - send.iter().min().unwrap() <= 1);
    }

    #[test]
    fn presence_followers_are_never_on_the_followed_users_node() {
        for nodes in 2..=5 {
            let mut used = vec![0; nodes];
            for f in 0..100 {
                let n = presence_follower_node(f, nodes);
                assert!(n < nodes);
                for t in 0..10 {
                    assert_ne!(n, presence_target_node(t, nodes), "{nodes} nodes");
                }
                used[n] += 1;
            }
            // Followers use every other node, evenly.
            let others = &used[1..];
            assert!(others.iter().all(|&c| c > 0), "{used:?}");
            assert!(others.iter().max().unwrap() - others.iter().min().unwrap() <= 1);
        }
        // One node: everything on it.
        assert_eq!(presence_follower_node(7, 1), 0);
        assert_eq!(presence_target_node(3, 1), 0);
    }

    #[test]
    fn round_robin_cycles_over_nodes() {
        let v: Vec<usize> = (0..7).map(|i| round_robin(i, 3)).collect();
        assert_eq!(v, vec![0, 1, 2, 0, 1, 2, 0]);
        assert_eq!(round_robin(5, 1), 0);
    }

    #[test]
    fn destinations_per_node() {
        let nodes = [node("127.0.0.1:5001"), node("127.0.0.1:5002")];
        let d = Dests::new(&nodes, 2);
        assert_eq!(d.nodes(), 2);
        assert_eq!(d.addrs().len(), 4);
        let (a, host) = d.get(d.pick(1, 0));
        assert_eq!(a, "127.0.0.1:5002".parse().unwrap());
        assert_eq!(&*host, "127.0.0.1:5002");
        let (a, host) = d.get(d.pick(1, 1));
        assert_eq!(a, "127.0.0.2:5002".parse().unwrap());
        assert_eq!(&*host, "127.0.0.1:5002");
        let (a, _) = d.get(d.pick(0, 3));
        assert_eq!(a, "127.0.0.2:5001".parse().unwrap());
        // One node, one address: the single-address form as before.
        let d = Dests::new(&nodes[..1], 1);
        assert_eq!(d.addrs(), &["127.0.0.1:5001".parse().unwrap()]);
        assert_eq!(d.pick(0, 17), 0);
        // Not loopback: only the address itself, whatever --dest-addrs says.
        let d = Dests::new(&[node("10.1.2.3:80"), node("10.1.2.4:80")], 3);
        assert_eq!(d.addrs().len(), 2);
        assert_eq!(d.pick(1, 5), 1);
    }
}
