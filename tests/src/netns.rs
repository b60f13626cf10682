//! Test hosts of the project's own: Linux network namespaces (`ip netns`), each joined
//! to the test's namespace (the broker's host) by veth pairs, so a stage process runs
//! on a network of its own whose link can be cut for real (`ip link set ... down`).
//!
//! Each [`TestHost`] has two links: `data`, which carries its Kafka traffic and is the
//! one faults are applied to, and `mgmt`, which carries its admin port and its
//! WebSocket clients and is never touched, so the test can watch `/readyz` and
//! `/metrics` while the data link is cut. Kafka clients inside the host reach the broker
//! through a relay (socat) on the host's own loopback at the address the broker
//! advertises (librdkafka's mock cluster advertises `127.0.0.1:PORT`), which forwards
//! over the data link to whatever listens at [`TestHost::broker_side`]: in the tests, a
//! [`FaultProxy`](crate::fault_proxy::FaultProxy) in front of the broker.
//!
//! Needs root (CI runs as root) and iproute2 (installed from Debian if missing). If a
//! namespace cannot be made, the test fails saying why; it never skips.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::process::{Child, Command, Stdio};

/// Runs `ip args`, failing the test with the command and its stderr if it fails.
fn ip(args: &[&str]) {
    let output = Command::new("ip")
        .args(args)
        .output()
        .unwrap_or_else(|error| panic!("running `ip {}`: {error}", args.join(" ")));
    assert!(
        output.status.success(),
        "`ip {}` failed ({}): {}\nnetwork namespaces are needed by this test; it must run \
         as root on Linux with iproute2",
        args.join(" "),
        output.status,
        String::from_utf8_lossy(&output.stderr).trim()
    );
}

/// iproute2 and socat, from Debian if missing.
pub fn ensure_tools() {
    crate::ensure_debian_package("iproute2", "ip", "-V");
    crate::ensure_debian_package("socat", "socat", "-V");
}

/// A network namespace, deleted on drop (also when the test panics).
pub struct Netns {
    name: String,
}

impl Netns {
    /// `ip netns add <name>`, with the loopback up.
    pub fn create(name: &str) -> Self {
        ip(&["netns", "add", name]);
        let netns = Self {
            name: name.to_owned(),
        };
        ip(&["-n", name, "link", "set", "lo", "up"]);
        netns
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `ip netns exec <name> <program>`: `program` runs inside the namespace.
    pub fn command(&self, program: &str) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &self.name, program]);
        command
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Best effort: a namespace still held by a process disappears with it.
        let _ = Command::new("ip")
            .args(["netns", "delete", &self.name])
            .status();
    }
}

/// A veth pair: `outer` in the test's namespace with `outer_address`, its peer `inner`
/// in a [`Netns`] with `inner_address`, on a /30 of their own. Deleting the outer end
/// (on drop) deletes both.
pub struct Veth {
    outer: String,
    pub outer_address: Ipv4Addr,
    pub inner_address: Ipv4Addr,
}

impl Veth {
    fn create(netns: &Netns, outer: &str, inner: &str, subnet: [u8; 3]) -> Self {
        let [a, b, c] = subnet;
        let outer_address = Ipv4Addr::new(a, b, c, 1);
        let inner_address = Ipv4Addr::new(a, b, c, 2);
        ip(&[
            "link",
            "add",
            outer,
            "type",
            "veth",
            "peer",
            "name",
            inner,
            "netns",
            &netns.name,
        ]);
        let veth = Self {
            outer: outer.to_owned(),
            outer_address,
            inner_address,
        };
        ip(&["addr", "add", &format!("{outer_address}/30"), "dev", outer]);
        ip(&["link", "set", outer, "up"]);
        let inner_cidr = format!("{inner_address}/30");
        ip(&["-n", &netns.name, "addr", "add", &inner_cidr, "dev", inner]);
        ip(&["-n", &netns.name, "link", "set", inner, "up"]);
        veth
    }

    /// Cuts the link (`ip link set <outer> down`): the inner end loses its carrier, and
    /// whatever crosses it is dropped, as when a cable is pulled; open connections
    /// hang rather than close.
    pub fn cut(&self) {
        ip(&["link", "set", &self.outer, "down"]);
    }

    /// Mends the link (`ip link set <outer> up`).
    pub fn mend(&self) {
        ip(&["link", "set", &self.outer, "up"]);
    }
}

impl Drop for Veth {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["link", "delete", &self.outer])
            .stderr(Stdio::null())
            .status();
    }
}

/// A child process killed, with its whole process group, on drop.
struct GroupChild(Child);

impl Drop for GroupChild {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.0.id())])
            .status();
        let _ = self.0.wait();
    }
}

/// A test host: a namespace with a data link and a management link to the test's
/// namespace, and a relay from its loopback to the broker side of its data link.
pub struct TestHost {
    /// Fields drop in order: the relay first, then the links, then the namespace.
    _relay: GroupChild,
    pub data: Veth,
    pub mgmt: Veth,
    pub netns: Netns,
    /// Where the relay forwards to: `data.outer_address` at the broker's port. Whatever
    /// listens here (a fault proxy) receives this host's Kafka connections.
    pub broker_side: SocketAddr,
}

impl TestHost {
    /// Host `index` (1..=99) of a test run `run` (a few random hex characters, unique to
    /// the run; names stay within Linux's 15 characters), on subnets `10.<octet>.x.0/30`,
    /// with a relay in the host from `broker` (the address the broker advertises, on
    /// loopback) to `data.outer_address:<broker's port>`.
    pub fn create(run: &str, octet: u8, index: u8, broker: SocketAddr) -> Self {
        assert!(
            (1..100).contains(&index),
            "host index {index} out of 1..=99"
        );
        assert!(
            broker.ip().is_loopback(),
            "the relay listens on the host's loopback: {broker}"
        );
        let netns = Netns::create(&format!("fanout-{run}-{index}"));
        let data = Veth::create(
            &netns,
            &format!("fo{run}d{index}"),
            "data",
            [10, octet, index],
        );
        let mgmt = Veth::create(
            &netns,
            &format!("fo{run}m{index}"),
            "mgmt",
            [10, octet, 100 + index],
        );
        let broker_side = SocketAddr::V4(SocketAddrV4::new(data.outer_address, broker.port()));
        // Kafka clients in the host connect to `broker`; socat accepts on the host's
        // loopback and connects over the data link. A connect that gets no answer (a
        // cut link) gives up after 2 s and closes the client's connection, as a failed
        // connect would.
        let mut command = netns.command("socat");
        command
            .args([
                &format!(
                    "TCP-LISTEN:{},bind={},fork,reuseaddr",
                    broker.port(),
                    broker.ip()
                ),
                &format!("TCP:{broker_side},connect-timeout=2,nodelay"),
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        std::os::unix::process::CommandExt::process_group(&mut command, 0);
        let relay = GroupChild(
            command
                .spawn()
                .unwrap_or_else(|error| panic!("starting socat in {}: {error}", netns.name)),
        );
        Self {
            _relay: relay,
            data,
            mgmt,
            netns,
            broker_side,
        }
    }

    /// An address in the host, on its management link, port 0: for its admin port and
    /// its WebSocket listener.
    pub fn mgmt_listen(&self) -> String {
        format!("{}:0", self.mgmt.inner_address)
    }
}

/// The hosts of one test: names and subnets of its own, so tests can run side by side.
pub struct TestNet {
    run: String,
    octet: u8,
    hosts: u8,
}

impl TestNet {
    /// A new set of names (random) and subnets (`10.<octet>.0.0/16`, one octet per
    /// `TestNet` of this process, from a base that differs between processes).
    pub fn new() -> Self {
        use std::sync::atomic::{AtomicU8, Ordering};
        static NETS: AtomicU8 = AtomicU8::new(0);
        ensure_tools();
        let net = NETS.fetch_add(1, Ordering::SeqCst);
        assert!(net < 8, "at most 8 test networks per process");
        let base = 128 + (std::process::id() % 15) as u8 * 8;
        Self {
            run: fanout_app::tools::random_hex(2),
            octet: base + net,
            hosts: 0,
        }
    }

    /// The next [`TestHost`], its relay forwarding to `broker`.
    pub fn host(&mut self, broker: SocketAddr) -> TestHost {
        self.hosts += 1;
        TestHost::create(&self.run, self.octet, self.hosts, broker)
    }
}

impl Default for TestNet {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listed(command: &[&str], name: &str) -> bool {
        let output = Command::new("ip").args(command).output().unwrap();
        String::from_utf8_lossy(&output.stdout).contains(name)
    }

    /// A host's namespace and links exist while it does, and are gone after it.
    #[test]
    fn a_host_is_made_and_removed_with_its_links() {
        let mut net = TestNet::new();
        let host = net.host("127.0.0.1:9".parse().unwrap());
        let netns = host.netns.name().to_owned();
        let link = format!("fo{}d1", net.run);
        assert!(listed(&["netns", "list"], &netns));
        assert!(listed(&["link", "show"], &link));
        assert!(listed(
            &["-n", &netns, "addr", "show", "dev", "mgmt"],
            &host.mgmt.inner_address.to_string()
        ));
        host.data.cut();
        assert!(listed(&["link", "show", &link], "state DOWN"));
        host.data.mend();
        drop(host);
        assert!(!listed(&["netns", "list"], &netns));
        assert!(!listed(&["link", "show"], &link));
    }
}
