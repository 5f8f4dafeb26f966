//! A TCP proxy in front of several nodes, as a load balancer is: each new
//! connection goes to the next node in turn, and a node that is down (being
//! restarted) turns the connection away by closing it. The node list can be
//! changed while it runs, since a restarted node listens on a new port.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

pub struct SwitchProxy {
    pub addr: SocketAddr,
    nodes: Arc<Mutex<Vec<Option<SocketAddr>>>>,
    /// Connections taken to each node, by index.
    taken: Arc<Vec<AtomicUsize>>,
    stop: Arc<AtomicBool>,
}

impl SwitchProxy {
    pub fn start(nodes: Vec<SocketAddr>) -> SwitchProxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let taken = Arc::new((0..nodes.len()).map(|_| AtomicUsize::new(0)).collect());
        let p = SwitchProxy {
            addr,
            nodes: Arc::new(Mutex::new(nodes.into_iter().map(Some).collect())),
            taken,
            stop: Arc::new(AtomicBool::new(false)),
        };
        let (nodes, taken, stop) = (p.nodes.clone(), p.taken.clone(), p.stop.clone());
        thread::spawn(move || {
            let mut next = 0usize;
            for client in listener.incoming() {
                if stop.load(Ordering::Relaxed) {
                    return;
                }
                let Ok(client) = client else { continue };
                let list = nodes.lock().unwrap().clone();
                let i = next % list.len();
                next += 1;
                // A node being restarted is not in the list: the client is
                // turned away, as a balancer with a failing backend does.
                let Some(upstream) = list[i]
                    .and_then(|a| TcpStream::connect_timeout(&a, Duration::from_secs(1)).ok())
                else {
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                };
                taken[i].fetch_add(1, Ordering::Relaxed);
                pipe(client, upstream);
            }
        });
        p
    }

    /// Node `i` is down (`None`) or up at a new address.
    pub fn set(&self, i: usize, addr: Option<SocketAddr>) {
        self.nodes.lock().unwrap()[i] = addr;
    }

    /// How many connections each node took.
    pub fn taken(&self) -> Vec<usize> {
        self.taken
            .iter()
            .map(|t| t.load(Ordering::Relaxed))
            .collect()
    }
}

impl Drop for SwitchProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wakes the accept loop so that it sees `stop`.
        let _ = TcpStream::connect(self.addr);
    }
}

/// Copies both ways; when either side ends, both are shut.
fn pipe(a: TcpStream, b: TcpStream) {
    let _ = a.set_nodelay(true);
    let _ = b.set_nodelay(true);
    for (mut from, mut to) in [(a.try_clone().unwrap(), b.try_clone().unwrap()), (b, a)] {
        thread::spawn(move || {
            let mut buf = [0u8; 16 * 1024];
            loop {
                match from.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if to.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                }
            }
            let _ = from.shutdown(Shutdown::Both);
            let _ = to.shutdown(Shutdown::Both);
        });
    }
}
