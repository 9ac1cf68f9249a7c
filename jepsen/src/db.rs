//! DB control: start, stop, kill, pause and resume each node, and cut links
//! between nodes with real packet filtering. Two backends:
//!
//! - [`LocalDb`]: `quorumq server` processes on this machine. With
//!   `Net::Namespaces` each node runs in its own network namespace, wired to a
//!   bridge by a veth pair, with its own address (10.77.S.11, .12, …), so
//!   that iptables rules inside a namespace cut exactly the links we choose.
//!   S is the run's slot (see [`NetSlot`]): concurrent runs on one machine
//!   get their own bridge, namespaces and subnet.
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
    /// Deletes the data of node `id`, which must be stopped; from then on
    /// it starts with `--join`: an empty node, with the same id and address,
    /// that waits to be added to the cluster (the membership nemesis removes
    /// it from the cluster first).
    fn wipe(&mut self, id: NodeId) -> io::Result<()>;
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

const PORT: u16 = 7001;

/// How many namespaced runs may share a machine.
const SLOTS: u32 = 32;

/// The network names of one namespaced run: slot S has bridge `qqjS-br`,
/// namespaces `qqjS-nI`, host veths `qqjS-vI` and subnet 10.77.S.0/24. A run
/// holds its slot with an exclusive lock on a file in the temp directory
/// for as long as it lives, so two runs never touch each other's names (and
/// a run only ever cleans up leftovers of its own slot). Slots start at 1:
/// older harness builds used the fixed names `qqj-*` and 10.77.0.0/24.
#[derive(Debug)]
pub struct NetSlot {
    slot: u32,
    _lock: File,
}

impl NetSlot {
    /// Takes the first free slot.
    pub fn take() -> io::Result<NetSlot> {
        for slot in 1..=SLOTS {
            let file = File::create(std::env::temp_dir().join(format!("quorumq-jepsen-netns-{slot}.lock")))?;
            // SAFETY: flock on a file descriptor we own.
            let rc = unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&file), libc::LOCK_EX | libc::LOCK_NB) };
            if rc == 0 {
                return Ok(NetSlot { slot, _lock: file });
            }
        }
        Err(io::Error::other(format!("all {SLOTS} namespaced quorumq-jepsen slots are in use on this machine")))
    }

    pub fn slot(&self) -> u32 {
        self.slot
    }

    fn bridge(&self) -> String {
        format!("qqj{}-br", self.slot)
    }

    fn netns(&self, id: NodeId) -> String {
        format!("qqj{}-n{id}", self.slot)
    }

    fn host_veth(&self, id: NodeId) -> String {
        format!("qqj{}-v{id}", self.slot)
    }

    fn subnet_prefix(&self) -> String {
        format!("10.77.{}", self.slot)
    }

    fn node_ip(&self, id: NodeId) -> String {
        format!("{}.{}", self.subnet_prefix(), 10 + id)
    }
}

struct LocalNode {
    addr: String,
    data_dir: PathBuf,
    log_path: PathBuf,
    /// Wiped: it starts with `--join`.
    join: bool,
    child: Option<Child>,
    paused: bool,
}

/// Node processes on this machine.
pub struct LocalDb {
    binary: PathBuf,
    net: Net,
    nodes: BTreeMap<NodeId, LocalNode>,
    server_args: Vec<String>,
    /// With `Net::Namespaces`: this run's network names.
    slot: Option<NetSlot>,
}

impl LocalDb {
    /// Lays out `n` nodes whose data and logs go under `dir`. With
    /// `Net::Namespaces` this takes the run's network slot.
    pub fn new(binary: PathBuf, n: u64, dir: &std::path::Path, net: Net, server_args: Vec<String>) -> io::Result<Self> {
        let slot = match net {
            Net::Namespaces => Some(NetSlot::take()?),
            Net::Loopback => None,
        };
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
                let host = match &slot {
                    Some(slot) => slot.node_ip(id),
                    None => "127.0.0.1".to_string(),
                };
                let node_dir = dir.join(format!("n{id}"));
                let node = LocalNode {
                    addr: format!("{host}:{port}"),
                    data_dir: node_dir.join("data"),
                    log_path: node_dir.join("node.log"),
                    join: false,
                    child: None,
                    paused: false,
                };
                (id, node)
            })
            .collect();
        Ok(LocalDb { binary, net, nodes, server_args, slot })
    }

    fn peers(&self) -> String {
        self.nodes.iter().map(|(id, n)| format!("{id}={}", n.addr)).collect::<Vec<_>>().join(",")
    }

    /// This run's network names (namespaced runs only).
    fn slot(&self) -> io::Result<&NetSlot> {
        self.slot.as_ref().ok_or_else(|| io::Error::other("no network namespaces in --net loopback"))
    }

    /// Removes this slot's bridge, namespaces and rule, if present.
    fn remove_network(&self) {
        let Some(slot) = &self.slot else { return };
        for id in 1..=9 {
            run_quiet("ip", &["netns", "del", &slot.netns(id)]);
            run_quiet("ip", &["link", "del", &slot.host_veth(id)]);
        }
        let bridge = slot.bridge();
        run_quiet("ip", &["link", "del", &bridge]);
        // Docker sets the FORWARD policy to DROP and bridged frames pass
        // through iptables when br_netfilter is loaded.
        while Command::new("iptables")
            .args(["-D", "FORWARD", "-i", &bridge, "-o", &bridge, "-j", "ACCEPT"])
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
        let slot = self.slot()?;
        let bridge = slot.bridge();
        run("ip", &["link", "add", &bridge, "type", "bridge"])?;
        run("ip", &["addr", "add", &format!("{}.1/24", slot.subnet_prefix()), "dev", &bridge])?;
        run("ip", &["link", "set", &bridge, "up"])?;
        run("iptables", &["-I", "FORWARD", "-i", &bridge, "-o", &bridge, "-j", "ACCEPT"])?;
        for &id in self.nodes.keys() {
            let (ns, veth) = (slot.netns(id), slot.host_veth(id));
            run("ip", &["netns", "add", &ns])?;
            run("ip", &["link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &ns])?;
            run("ip", &["link", "set", &veth, "master", &bridge])?;
            run("ip", &["link", "set", &veth, "up"])?;
            run(
                "ip",
                &["netns", "exec", &ns, "ip", "addr", "add", &format!("{}/24", slot.node_ip(id)), "dev", "eth0"],
            )?;
            run("ip", &["netns", "exec", &ns, "ip", "link", "set", "eth0", "up"])?;
            run("ip", &["netns", "exec", &ns, "ip", "link", "set", "lo", "up"])?;
        }
        Ok(())
    }

    /// The network slot of a namespaced run.
    pub fn net_slot(&self) -> Option<u32> {
        self.slot.as_ref().map(NetSlot::slot)
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
        let (binary, args) = (self.binary.clone(), self.server_args.clone());
        let netns = self.slot.as_ref().map(|slot| slot.netns(id));
        let node = self.nodes.get_mut(&id).ok_or_else(|| io::Error::other(format!("no node {id}")))?;
        if let Some(child) = node.child.as_mut()
            && child.try_wait()?.is_none()
        {
            return Ok(());
        }
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&node.log_path)?;
        let mut command = match &netns {
            Some(netns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", netns]).arg(&binary);
                c
            }
            None => Command::new(&binary),
        };
        command
            .arg("server")
            .args(["--id", &id.to_string(), "--listen", &node.addr, "--peers", &peers])
            .arg("--data-dir")
            .arg(&node.data_dir)
            .args(node.join.then_some("--join"))
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
        let slot = self.slot()?;
        for (&a, dropped) in grudge {
            for &b in dropped {
                let (ns, source) = (slot.netns(a), slot.node_ip(b));
                run("ip", &["netns", "exec", &ns, "iptables", "-A", "INPUT", "-s", &source, "-j", "DROP"])?;
            }
        }
        Ok(())
    }

    fn heal(&mut self) -> io::Result<()> {
        let Some(slot) = &self.slot else { return Ok(()) };
        for id in self.nodes() {
            run("ip", &["netns", "exec", &slot.netns(id), "iptables", "-F", "INPUT"])?;
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

    fn wipe(&mut self, id: NodeId) -> io::Result<()> {
        if self.is_running(id) {
            return Err(io::Error::other(format!("node {id} is running; stop it before wiping it")));
        }
        let node = self.nodes.get_mut(&id).ok_or_else(|| io::Error::other(format!("no node {id}")))?;
        match std::fs::remove_dir_all(&node.data_dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        std::fs::create_dir_all(&node.data_dir)?;
        node.join = true;
        Ok(())
    }
}

impl Drop for LocalDb {
    fn drop(&mut self) {
        let _ = self.teardown();
    }
}
