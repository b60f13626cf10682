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

#[cfg(test)]
mod tests {
    use super::*;

    /// An echo server on loopback, and a proxy in front of it; a client of the proxy.
    async fn echo_through_proxy() -> (FaultProxy, TcpStream) {
        let echo = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let upstream = echo.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = echo.accept().await {
                tokio::spawn(async move {
                    let (mut read, mut write) = socket.split();
                    let _ = tokio::io::copy(&mut read, &mut write).await;
                });
            }
        });
        let proxy = FaultProxy::start("127.0.0.1:0".parse().unwrap(), upstream).await;
        let client = TcpStream::connect(proxy.address).await.unwrap();
        (proxy, client)
    }

    async fn read_exactly(client: &mut TcpStream, length: usize) -> Vec<u8> {
        let mut buffer = vec![0u8; length];
        tokio::time::timeout(crate::DEADLINE, client.read_exact(&mut buffer))
            .await
            .expect("the bytes came back before the deadline")
            .unwrap();
        buffer
    }

    #[tokio::test]
    async fn bytes_pass_unchanged_and_in_order() {
        let (_proxy, mut client) = echo_through_proxy().await;
        let sent: Vec<u8> = (0..200_000u32).map(|index| (index % 251) as u8).collect();
        let (mut read, mut write) = client.split();
        let (_, received) = tokio::join!(write.write_all(&sent), async {
            let mut buffer = vec![0u8; sent.len()];
            read.read_exact(&mut buffer).await.unwrap();
            buffer
        });
        assert_eq!(received, sent);
    }

    #[tokio::test]
    async fn latency_holds_each_direction_back() {
        let (proxy, mut client) = echo_through_proxy().await;
        proxy.set_latency(Duration::from_millis(200));
        let started = Instant::now();
        client.write_all(b"ping").await.unwrap();
        assert_eq!(read_exactly(&mut client, 4).await, b"ping");
        // Through the proxy twice (there and back): a lower bound, whatever the load.
        assert!(started.elapsed() >= Duration::from_millis(400));
    }

    #[tokio::test]
    async fn a_stall_forwards_nothing_until_it_ends_and_loses_nothing() {
        let (proxy, mut client) = echo_through_proxy().await;
        proxy.set_stalled(true);
        client.write_all(b"held").await.unwrap();
        let mut byte = [0u8; 1];
        let during = tokio::time::timeout(Duration::from_millis(500), client.read(&mut byte)).await;
        assert!(during.is_err(), "nothing comes back during a stall");
        proxy.set_stalled(false);
        assert_eq!(read_exactly(&mut client, 4).await, b"held");
    }

    #[tokio::test]
    async fn dropped_connections_close_and_new_ones_pass() {
        let (proxy, mut client) = echo_through_proxy().await;
        client.write_all(b"a").await.unwrap();
        assert_eq!(read_exactly(&mut client, 1).await, b"a");
        assert_eq!(proxy.drop_connections(), 1);
        let mut byte = [0u8; 1];
        let read = tokio::time::timeout(crate::DEADLINE, client.read(&mut byte))
            .await
            .expect("the close came before the deadline");
        assert!(matches!(read, Ok(0) | Err(_)), "closed: {read:?}");
        let mut again = TcpStream::connect(proxy.address).await.unwrap();
        again.write_all(b"b").await.unwrap();
        assert_eq!(read_exactly(&mut again, 1).await, b"b");
    }
}
