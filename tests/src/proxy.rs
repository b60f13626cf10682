//! A TCP proxy between clients and an edge, to do to their connections what networks
//! and deploys do: cut every connection at once, refuse new ones for a while, and send
//! the next ones to another edge. Clients connect to [`TcpProxy::address`] and never
//! know.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

pub struct TcpProxy {
    pub address: SocketAddr,
    shared: Arc<Shared>,
    accept: JoinHandle<()>,
}

struct Shared {
    upstream: Mutex<SocketAddr>,
    refusing: AtomicBool,
    connections: Mutex<Vec<JoinHandle<()>>>,
}

impl TcpProxy {
    /// A proxy on a loopback port, forwarding to `upstream`.
    pub async fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let shared = Arc::new(Shared {
            upstream: Mutex::new(upstream),
            refusing: AtomicBool::new(false),
            connections: Mutex::new(Vec::new()),
        });
        let accept = {
            let shared = shared.clone();
            tokio::spawn(async move {
                loop {
                    let Ok((client, _)) = listener.accept().await else {
                        continue;
                    };
                    if shared.refusing.load(Ordering::SeqCst) {
                        drop(client);
                        continue;
                    }
                    let upstream = *shared.upstream.lock().unwrap();
                    let connection = tokio::spawn(pipe(client, upstream));
                    let mut connections = shared.connections.lock().unwrap();
                    connections.retain(|connection| !connection.is_finished());
                    connections.push(connection);
                }
            })
        };
        Self {
            address,
            shared,
            accept,
        }
    }

    /// New connections go to `upstream`; open ones stay where they are.
    pub fn set_upstream(&self, upstream: SocketAddr) {
        *self.shared.upstream.lock().unwrap() = upstream;
    }

    /// Drops every open connection, both ways, as a network that goes away does:
    /// neither side gets a WebSocket close. Returns how many there were.
    pub fn cut(&self) -> usize {
        let mut connections = self.shared.connections.lock().unwrap();
        let open = connections
            .iter()
            .filter(|connection| !connection.is_finished())
            .count();
        for connection in connections.drain(..) {
            connection.abort();
        }
        open
    }

    /// While `refusing`, connections are accepted and closed at once (the client's
    /// handshake fails and it backs off and tries again).
    pub fn refuse(&self, refusing: bool) {
        self.shared.refusing.store(refusing, Ordering::SeqCst);
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.accept.abort();
        for connection in self.shared.connections.lock().unwrap().drain(..) {
            connection.abort();
        }
    }
}

async fn pipe(mut client: TcpStream, upstream: SocketAddr) {
    let Ok(mut server) = TcpStream::connect(upstream).await else {
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
}
