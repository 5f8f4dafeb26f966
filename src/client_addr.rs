//! Which address a request comes from, for every per-address budget.
//!
//! Directly connected clients are their TCP peer. Behind a reverse proxy every
//! client shares the proxy's address, so with `KLAV_TRUSTED_PROXIES` set, a
//! request whose peer is a trusted proxy is attributed to the rightmost address
//! in `X-Forwarded-For` that is not itself a trusted proxy (nginx's
//! `real_ip_recursive on`). Entries left of that are whatever the client chose to
//! send and are never believed; a request from any other peer is its peer, whatever
//! headers it carries.

use std::fmt;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};

use crate::http::Request;

/// An address range: an address and how many leading bits must match.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    net: IpAddr,
    prefix: u8,
}

impl Cidr {
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.net, ip.to_canonical()) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                prefix_eq(&n.octets(), &a.octets(), self.prefix as usize)
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                prefix_eq(&n.octets(), &a.octets(), self.prefix as usize)
            }
            _ => false,
        }
    }
}

fn prefix_eq(a: &[u8], b: &[u8], bits: usize) -> bool {
    let whole = bits / 8;
    if a[..whole] != b[..whole] {
        return false;
    }
    let rest = bits % 8;
    rest == 0 || (a[whole] ^ b[whole]) >> (8 - rest) == 0
}

/// `KLAV_TRUSTED_PROXIES` could not be read; the text names the bad entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadProxyList(pub String);

impl fmt::Display for BadProxyList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?} is not an IP address or CIDR range", self.0)
    }
}

impl std::error::Error for BadProxyList {}

/// The reverse proxies whose `X-Forwarded-For` is believed (empty: none).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TrustedProxies(Vec<Cidr>);

impl TrustedProxies {
    /// Comma-separated addresses (`10.0.0.5`, `::1`) and ranges (`10.0.0.0/8`).
    pub fn parse(list: &str) -> Result<TrustedProxies, BadProxyList> {
        let mut out = Vec::new();
        for entry in list.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            let bad = || BadProxyList(entry.to_string());
            let (addr, prefix) = match entry.split_once('/') {
                Some((a, p)) => (a, Some(p)),
                None => (entry, None),
            };
            let net: IpAddr = addr.parse().map_err(|_| bad())?;
            let net = net.to_canonical();
            let max = if net.is_ipv4() { 32 } else { 128 };
            let prefix = match prefix {
                None => max,
                Some(p) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => {
                    p.parse::<u8>().ok().filter(|&n| n <= max).ok_or_else(bad)?
                }
                Some(_) => return Err(bad()),
            };
            out.push(Cidr { net, prefix });
        }
        Ok(TrustedProxies(out))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        self.0.iter().any(|c| c.contains(ip))
    }
}

/// The address a request is attributed to (see the module documentation).
pub fn client_addr(peer: SocketAddr, req: &Request, trusted: &TrustedProxies) -> IpAddr {
    let mut addr = peer.ip().to_canonical();
    if !trusted.contains(addr) {
        return addr;
    }
    let forwarded: Vec<&str> = req
        .header_values("x-forwarded-for")
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .collect();
    for entry in forwarded.into_iter().rev() {
        // An entry that is not an address ends the chain: the hop that added it
        // (a trusted proxy) is the best we know.
        let Some(hop) = parse_hop(entry) else {
            return addr;
        };
        addr = hop;
        if !trusted.contains(hop) {
            return hop;
        }
    }
    addr
}

/// `1.2.3.4`, `2001:db8::1`, or either with a port (`1.2.3.4:5678`, `[::1]:80`).
fn parse_hop(entry: &str) -> Option<IpAddr> {
    entry
        .parse::<IpAddr>()
        .ok()
        .or_else(|| entry.parse::<SocketAddr>().ok().map(|s| s.ip()))
        .map(|ip| ip.to_canonical())
}

/// The key a per-address budget counts under: the address itself for IPv4, its
/// /64 network for IPv6 (one subscriber typically holds a whole /64, so counting
/// single IPv6 addresses would give each client billions of budgets).
pub fn budget_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let s = v6.segments();
            IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
        }
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(xff: &[&str]) -> Request {
        let mut raw = String::from("GET / HTTP/1.1\r\n");
        for v in xff {
            raw.push_str(&format!("X-Forwarded-For: {v}\r\n"));
        }
        raw.push_str("\r\n");
        crate::http::parse(raw.as_bytes()).unwrap().unwrap().0
    }

    #[test]
    fn parses_lists() {
        let t = TrustedProxies::parse(" 10.0.0.0/8, 127.0.0.1 ,::1,2001:db8::/32").unwrap();
        assert!(t.contains("10.200.1.1".parse().unwrap()));
        assert!(!t.contains("11.0.0.1".parse().unwrap()));
        assert!(t.contains("127.0.0.1".parse().unwrap()));
        assert!(t.contains("::ffff:127.0.0.1".parse().unwrap()));
        assert!(t.contains("::1".parse().unwrap()));
        assert!(t.contains("2001:db8:1::9".parse().unwrap()));
        assert!(!t.contains("2001:db9::1".parse().unwrap()));
        assert!(TrustedProxies::parse("").unwrap().is_empty());
        for bad in [
            "10.0.0.0/33",
            "nonsense",
            "10.0.0.1/",
            "10.0.0.1/+8",
            "::1/129",
        ] {
            assert!(TrustedProxies::parse(bad).is_err(), "{bad}");
        }
        let t = TrustedProxies::parse("192.168.1.0/25").unwrap();
        assert!(t.contains("192.168.1.127".parse().unwrap()));
        assert!(!t.contains("192.168.1.128".parse().unwrap()));
    }

    #[test]
    fn rightmost_untrusted_hop() {
        let t = TrustedProxies::parse("127.0.0.1, 10.0.0.0/8").unwrap();
        let proxy: SocketAddr = "127.0.0.1:4000".parse().unwrap();
        let direct: SocketAddr = "198.51.100.7:4000".parse().unwrap();
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        // Not from a proxy: the header is ignored.
        assert_eq!(
            client_addr(direct, &req(&["1.1.1.1"]), &t),
            ip("198.51.100.7")
        );
        // From a proxy: the rightmost untrusted entry; spoofed entries left of it lose.
        assert_eq!(
            client_addr(proxy, &req(&["6.6.6.6, 203.0.113.9, 10.1.1.1"]), &t),
            ip("203.0.113.9")
        );
        assert_eq!(
            client_addr(proxy, &req(&["6.6.6.6", "203.0.113.9:555"]), &t),
            ip("203.0.113.9")
        );
        // No header, or only proxies: the last trusted hop.
        assert_eq!(client_addr(proxy, &req(&[]), &t), ip("127.0.0.1"));
        assert_eq!(client_addr(proxy, &req(&["10.0.0.2"]), &t), ip("10.0.0.2"));
        // Garbage stops the walk at the hop that added it.
        assert_eq!(
            client_addr(proxy, &req(&["1.1.1.1, junk, 10.0.0.3"]), &t),
            ip("10.0.0.3")
        );
        // Nothing trusted: always the peer.
        let none = TrustedProxies::default();
        assert_eq!(
            client_addr(proxy, &req(&["1.1.1.1"]), &none),
            ip("127.0.0.1")
        );
    }

    #[test]
    fn ipv6_budgets_per_64() {
        let a = budget_key("2001:db8:1:2:aaaa::1".parse().unwrap());
        let b = budget_key("2001:db8:1:2:bbbb::2".parse().unwrap());
        let c = budget_key("2001:db8:1:3::1".parse().unwrap());
        assert_eq!(a, b);
        assert_ne!(a, c);
        let v4: IpAddr = "192.0.2.1".parse().unwrap();
        assert_eq!(budget_key(v4), v4);
    }
}
