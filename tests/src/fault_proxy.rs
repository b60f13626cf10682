//! A TCP fault proxy in front of the broker: what a bad network does to a stage's
//! Kafka connections when the kernel has no `netem`. Every byte is forwarded in order,
//! each direction on its own; the faults are latency (each chunk is held until its
//! arrival time plus the delay), stalls (nothing is forwarded either way until the
//! stall ends; nothing is lost) and dropped connections (every open connection closed
//! at once, both ways). Link cuts are not the proxy's: they are real
//! (see [`crate::netns::Veth::cut`]).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// The faults in force; every connection follows changes at once.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Faults {
    /// Added to each direction.
    pub latency: Duration,
    /// Nothing is forwarded while set.
    pub stalled: bool,
}

pub struct FaultProxy {
    pub address: SocketAddr,
    faults: watch::Sender<Faults>,
    connections: Arc<Mutex<Vec<JoinHandle<()>>>>,
    accept: JoinHandle<()>,
}

impl FaultProxy {
    /// A proxy listening on `listen`, forwarding to `upstream`, with no faults.
    pub async fn start(listen: SocketAddr, upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind(listen)
            .await
            .unwrap_or_else(|error| panic!("binding the fault proxy to {listen}: {error}"));
        let address = listener.local_addr().unwrap();
        let (faults, _) = watch::channel(Faults::default());
        let connections = Arc::new(Mutex::new(Vec::<JoinHandle<()>>::new()));
        let accept = {
            let faults = faults.clone();
            let connections = connections.clone();
            tokio::spawn(async move {
                loop {
                    let Ok((client, _)) = listener.accept().await else {
                        continue;
                    };
                    let connection = tokio::spawn(forward(client, upstream, faults.subscribe()));
                    let mut connections = connections.lock().unwrap();
                    connections.retain(|connection| !connection.is_finished());
                    connections.push(connection);
                }
            })
        };
        Self {
            address,
            faults,
            connections,
            accept,
        }
    }

    /// `latency` added to each direction from now on (chunks already held keep theirs).
    pub fn set_latency(&self, latency: Duration) {
        self.faults.send_modify(|faults| faults.latency = latency);
    }

    /// Stops forwarding both ways (`true`) or resumes (`false`).
    pub fn set_stalled(&self, stalled: bool) {
        self.faults.send_modify(|faults| faults.stalled = stalled);
    }

    /// Closes every open connection, both ways. Returns how many there were.
    pub fn drop_connections(&self) -> usize {
        let mut connections = self.connections.lock().unwrap();
        let open = connections
            .iter()
            .filter(|connection| !connection.is_finished())
            .count();
        for connection in connections.drain(..) {
            connection.abort();
        }
        open
    }

    /// Connections open now.
    pub fn open_connections(&self) -> usize {
        let connections = self.connections.lock().unwrap();
        connections
            .iter()
            .filter(|connection| !connection.is_finished())
            .count()
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.drop_connections();
    }
}

/// One connection: each direction read as it comes and written when due.
async fn forward(client: TcpStream, upstream: SocketAddr, faults: watch::Receiver<Faults>) {
    let Ok(server) = TcpStream::connect(upstream).await else {
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    let up = one_way(client_read, server_write, faults.clone());
    let down = one_way(server_read, client_write, faults);
    // Either side's end ends both: the other side then sees the connection close.
    tokio::select! {
        () = up => {}
        () = down => {}
    }
}

async fn one_way(
    mut from: impl tokio::io::AsyncRead + Unpin,
    mut to: impl tokio::io::AsyncWrite + Unpin,
    mut faults: watch::Receiver<Faults>,
) {
    // Unbounded: a stall holds what arrives meanwhile (a test's traffic is small).
    let (held_tx, mut held_rx) = mpsc::unbounded_channel::<(Instant, Vec<u8>)>();
    let read = {
        let faults = faults.clone();
        async move {
            let mut buffer = vec![0u8; 64 * 1024];
            loop {
                match from.read(&mut buffer).await {
                    Ok(0) | Err(_) => return,
                    Ok(read) => {
                        let due = Instant::now() + faults.borrow().latency;
                        if held_tx.send((due, buffer[..read].to_vec())).is_err() {
                            return;
                        }
                    }
                }
            }
        }
    };
    let write = async move {
        while let Some((due, chunk)) = held_rx.recv().await {
            tokio::time::sleep_until(due).await;
            if faults.wait_for(|faults| !faults.stalled).await.is_err() {
                return;
            }
            if to.write_all(&chunk).await.is_err() {
                return;
            }
        }
        // The reading side ended (its peer closed): pass the close on.
        let _ = to.shutdown().await;
    };
    // In this task, not spawned: dropping the connection's task must close the socket.
    // The writer finishes what was read before a close.
    tokio::join!(read, write);
}
