//! DB control: start, stop, kill, pause and resume each node, and cut links
//! between nodes with real packet filtering. Two backends:
//!
//! - [`LocalDb`]: `quorumq server` processes on this machine. With
//!   `Net::Namespaces` each node runs in its own network namespace, wired to a
//!   bridge by a veth pair, with its own address (10.77.0.11, .12, …), so
//!   that iptables rules inside a namespace cut exactly the links we choose.
//!   With `Net::Loopback` nodes share 127.0.0.1 (no partitions possible);
//!   that mode needs no privileges.
//! - `ComposeDb` (in `compose.rs`): the Docker Compose cluster of `deploy/`.
//!
//! Partitions cut node-to-node traffic only: the test's clients can reach
//! every node, as clients on another host would.

use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::fs::File;
use std::io;
use std::path::PathBuf;
use std::process::Child;
use std::process::Command;
use std::process::Stdio;
use std::time::Duration;
use std::time::Instant;

pub type NodeId = u64;

/// For each node, the nodes whose packets it drops.
pub type Grudge = BTreeMap<NodeId, BTreeSet<NodeId>>;

/// What the nemesis can do to a cluster.
pub trait Db: Send {
    fn nodes(&self) -> Vec<NodeId>;
    /// The address clients use for a node (the one it advertises).
    fn client_addr(&self, id: NodeId) -> String;
    /// Brings the whole cluster up for the first time.
    fn setup(&mut self) -> io::Result<()>;
    fn start(&mut self, id: NodeId) -> io::Result<()>;
    /// SIGKILL.
    fn kill(&mut self, id: NodeId) -> io::Result<()>;
    /// SIGTERM, then SIGKILL after a grace period.
    fn stop(&mut self, id: NodeId) -> io::Result<()>;
    /// SIGSTOP.
    fn pause(&mut self, id: NodeId) -> io::Result<()>;
    /// SIGCONT.
    fn resume(&mut self, id: NodeId) -> io::Result<()>;
    fn is_running(&mut self, id: NodeId) -> bool;
    fn supports_partitions(&self) -> bool;
    /// Replaces any current partition with `grudge`.
    fn partition(&mut self, grudge: &Grudge) -> io::Result<()>;
    fn heal(&mut self) -> io::Result<()>;
    /// Stops everything and removes what setup created (keeps logs).
    fn teardown(&mut self) -> io::Result<()>;
}

/// Runs a command, failing with its stderr when it fails.
pub fn run(program: &str, args: &[&str]) -> io::Result<String> {
    let out = Command::new(program).args(args).stdin(Stdio::null()).output()?;
    if !out.status.success() {
        return Err(io::Error::other(format!(
            "`{program} {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs a command and ignores failure (cleanup of what may not exist).
fn run_quiet(program: &str, args: &[&str]) {
    let _ = Command::new(program).args(args).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null()).status();
}

fn signal(pid: u32, sig: libc::c_int) -> io::Result<()> {
    // SAFETY: kill(2) has no memory effects; the pid is our child.
    if unsafe { libc::kill(pid as libc::pid_t, sig) } == 0 { Ok(()) } else { Err(io::Error::last_os_error()) }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Net {
    Loopback,
    Namespaces,
}

const BRIDGE: &str = "qqj-br";
const SUBNET_PREFIX: &str = "10.77.0";
const PORT: u16 = 7001;

fn netns(id: NodeId) -> String {
    format!("qqj-n{id}")
}

fn host_veth(id: NodeId) -> String {
    format!("qqj-v{id}")
}

fn node_ip(id: NodeId) -> String {
    format!("{SUBNET_PREFIX}.{}", 10 + id)
}

struct LocalNode {
    addr: String,
    data_dir: PathBuf,
    log_path: PathBuf,
    child: Option<Child>,
    paused: bool,
}

/// Node processes on this machine.
pub struct LocalDb {
    binary: PathBuf,
    net: Net,
    nodes: BTreeMap<NodeId, LocalNode>,
    server_args: Vec<String>,
    _lock: Option<File>,
}

impl LocalDb {
    /// Lays out `n` nodes whose data and logs go under `dir`.
    pub fn new(binary: PathBuf, n: u64, dir: &std::path::Path, net: Net, server_args: Vec<String>) -> io::Result<Self> {
        let ports: Vec<u16> = match net {
            Net::Namespaces => vec![PORT; n as usize],
            Net::Loopback => {
                let listeners: Vec<_> =
                    (0..n).map(|_| std::net::TcpListener::bind("127.0.0.1:0")).collect::<io::Result<_>>()?;
                listeners.iter().map(|l| l.local_addr().map(|a| a.port())).collect::<io::Result<_>>()?
            }
        };
        let nodes = (1..=n)
            .zip(ports)
            .map(|(id, port)| {
                let host = match net {
                    Net::Namespaces => node_ip(id),
                    Net::Loopback => "127.0.0.1".to_string(),
                };
                let node_dir = dir.join(format!("n{id}"));
                let node = LocalNode {
                    addr: format!("{host}:{port}"),
                    data_dir: node_dir.join("data"),
                    log_path: node_dir.join("node.log"),
                    child: None,
                    paused: false,
                };
                (id, node)
            })
            .collect();
        Ok(LocalDb { binary, net, nodes, server_args, _lock: None })
    }

    fn peers(&self) -> String {
        self.nodes.iter().map(|(id, n)| format!("{id}={}", n.addr)).collect::<Vec<_>>().join(",")
    }

    /// Only one namespaced run per machine at a time: the names are fixed.
    fn take_lock(&mut self) -> io::Result<()> {
        let file = File::create(std::env::temp_dir().join("quorumq-jepsen-netns.lock"))?;
        // SAFETY: flock on a file descriptor we own.
        let rc = unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&file), libc::LOCK_EX | libc::LOCK_NB) };
        if rc != 0 {
            return Err(io::Error::other("another namespaced quorumq-jepsen run is in progress on this machine"));
        }
        self._lock = Some(file);
        Ok(())
    }

    fn remove_network(&self) {
        for id in 1..=9 {
            run_quiet("ip", &["netns", "del", &netns(id)]);
            run_quiet("ip", &["link", "del", &host_veth(id)]);
        }
        run_quiet("ip", &["link", "del", BRIDGE]);
        // Docker sets the FORWARD policy to DROP and bridged frames pass
        // through iptables when br_netfilter is loaded.
        while Command::new("iptables")
            .args(["-D", "FORWARD", "-i", BRIDGE, "-o", BRIDGE, "-j", "ACCEPT"])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
        {}
    }

    fn create_network(&self) -> io::Result<()> {
        if unsafe { libc::geteuid() } != 0 {
            return Err(io::Error::other(
                "network namespaces need root; run as root, or use --net loopback (no partition nemesis)",
            ));
        }
        self.remove_network();
        run("ip", &["link", "add", BRIDGE, "type", "bridge"])?;
        run("ip", &["addr", "add", &format!("{SUBNET_PREFIX}.1/24"), "dev", BRIDGE])?;
        run("ip", &["link", "set", BRIDGE, "up"])?;
        run("iptables", &["-I", "FORWARD", "-i", BRIDGE, "-o", BRIDGE, "-j", "ACCEPT"])?;
        for &id in self.nodes.keys() {
            let ns = netns(id);
            run("ip", &["netns", "add", &ns])?;
            run("ip", &["link", "add", &host_veth(id), "type", "veth", "peer", "name", "eth0", "netns", &ns])?;
            run("ip", &["link", "set", &host_veth(id), "master", BRIDGE])?;
            run("ip", &["link", "set", &host_veth(id), "up"])?;
            run("ip", &["netns", "exec", &ns, "ip", "addr", "add", &format!("{}/24", node_ip(id)), "dev", "eth0"])?;
            run("ip", &["netns", "exec", &ns, "ip", "link", "set", "eth0", "up"])?;
            run("ip", &["netns", "exec", &ns, "ip", "link", "set", "lo", "up"])?;
        }
        Ok(())
    }

    /// The path of a node's log file.
    pub fn log_path(&self, id: NodeId) -> PathBuf {
        self.nodes[&id].log_path.clone()
    }
}

impl Db for LocalDb {
    fn nodes(&self) -> Vec<NodeId> {
        self.nodes.keys().copied().collect()
    }

    fn client_addr(&self, id: NodeId) -> String {
        self.nodes[&id].addr.clone()
    }

    fn setup(&mut self) -> io::Result<()> {
        if self.net == Net::Namespaces {
            self.take_lock()?;
            self.create_network()?;
        }
        for id in self.nodes() {
            std::fs::create_dir_all(&self.nodes[&id].data_dir)?;
            self.start(id)?;
        }
        Ok(())
    }

    fn start(&mut self, id: NodeId) -> io::Result<()> {
        let peers = self.peers();
        let (binary, net, args) = (self.binary.clone(), self.net, self.server_args.clone());
        let node = self.nodes.get_mut(&id).ok_or_else(|| io::Error::other(format!("no node {id}")))?;
        if let Some(child) = node.child.as_mut()
            && child.try_wait()?.is_none()
        {
            return Ok(());
        }
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&node.log_path)?;
        let mut command = match net {
            Net::Namespaces => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", &netns(id)]).arg(&binary);
                c
            }
            Net::Loopback => Command::new(&binary),
        };
        command
            .arg("server")
            .args(["--id", &id.to_string(), "--listen", &node.addr, "--peers", &peers])
            .arg("--data-dir")
            .arg(&node.data_dir)
            .args(&args)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        if std::env::var_os("RUST_LOG").is_none() {
            command.env("RUST_LOG", "info,openraft=warn");
        }
        // `ip netns exec` execs the program, so the child's pid is the node's.
        node.child = Some(command.spawn()?);
        node.paused = false;
        Ok(())
    }

    fn kill(&mut self, id: NodeId) -> io::Result<()> {
        let node = self.nodes.get_mut(&id).ok_or_else(|| io::Error::other(format!("no node {id}")))?;
        if let Some(mut child) = node.child.take() {
            child.kill()?;
            child.wait()?;
        }
        node.paused = false;
        Ok(())
    }

    fn stop(&mut self, id: NodeId) -> io::Result<()> {
        let node = self.nodes.get_mut(&id).ok_or_else(|| io::Error::other(format!("no node {id}")))?;
        let Some(mut child) = node.child.take() else { return Ok(()) };
        if node.paused {
            signal(child.id(), libc::SIGCONT)?;
            node.paused = false;
        }
        signal(child.id(), libc::SIGTERM)?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if child.try_wait()?.is_some() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        child.kill()?;
        child.wait()?;
        Ok(())
    }

    fn pause(&mut self, id: NodeId) -> io::Result<()> {
        let node = self.nodes.get_mut(&id).ok_or_else(|| io::Error::other(format!("no node {id}")))?;
        if let Some(child) = &node.child {
            signal(child.id(), libc::SIGSTOP)?;
            node.paused = true;
        }
        Ok(())
    }

    fn resume(&mut self, id: NodeId) -> io::Result<()> {
        let node = self.nodes.get_mut(&id).ok_or_else(|| io::Error::other(format!("no node {id}")))?;
        if let Some(child) = &node.child {
            signal(child.id(), libc::SIGCONT)?;
            node.paused = false;
        }
        Ok(())
    }

    fn is_running(&mut self, id: NodeId) -> bool {
        let Some(node) = self.nodes.get_mut(&id) else { return false };
        match node.child.as_mut().map(|c| c.try_wait()) {
            Some(Ok(None)) => true,
            Some(_) => {
                node.child = None;
                false
            }
            None => false,
        }
    }

    fn supports_partitions(&self) -> bool {
        self.net == Net::Namespaces
    }

    fn partition(&mut self, grudge: &Grudge) -> io::Result<()> {
        if self.net != Net::Namespaces {
            return Err(io::Error::other("partitions need --net namespaces"));
        }
        self.heal()?;
        for (&a, dropped) in grudge {
            for &b in dropped {
                run("ip", &["netns", "exec", &netns(a), "iptables", "-A", "INPUT", "-s", &node_ip(b), "-j", "DROP"])?;
            }
        }
        Ok(())
    }

    fn heal(&mut self) -> io::Result<()> {
        if self.net != Net::Namespaces {
            return Ok(());
        }
        for id in self.nodes() {
            run("ip", &["netns", "exec", &netns(id), "iptables", "-F", "INPUT"])?;
        }
        Ok(())
    }

    fn teardown(&mut self) -> io::Result<()> {
        for id in self.nodes() {
            let _ = self.resume(id);
            let _ = self.kill(id);
        }
        if self.net == Net::Namespaces {
            self.remove_network();
        }
        Ok(())
    }
}

impl Drop for LocalDb {
    fn drop(&mut self) {
        let _ = self.teardown();
    }
}
