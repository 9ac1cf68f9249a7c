//! Runs a cluster of `quorumq server` processes on loopback: used by
//! `quorumq dev`, `quorumq demo` and the cluster tests. Each node is its own
//! process, so it can be killed (SIGKILL), stopped (SIGTERM), paused
//! (SIGSTOP) and restarted on its data directory.

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::io;
use std::path::Path;
use std::path::PathBuf;
use std::process::Child;
use std::process::Command;
use std::process::Stdio;
use std::time::Duration;
use std::time::Instant;

/// How to lay out a local cluster.
#[derive(Clone, Debug)]
pub struct ClusterOptions {
    /// The `quorumq` binary to run.
    pub binary: PathBuf,
    pub nodes: usize,
    /// Where node data and logs go; a temporary directory (removed on drop)
    /// when `None`.
    pub data_dir: Option<PathBuf>,
    /// Node `i` (from 1) listens on `base_port + i - 1`; free ports are
    /// picked when `None`.
    pub base_port: Option<u16>,
    /// Extra arguments for every `quorumq server`.
    pub server_args: Vec<String>,
    /// `RUST_LOG` for the nodes, when the environment sets none.
    pub default_log: String,
    /// Give every node an HTTP endpoint (`--http`, for /metrics, /health
    /// and /ready) on a free loopback port.
    pub http: bool,
}

impl ClusterOptions {
    pub fn new(binary: PathBuf, nodes: usize) -> ClusterOptions {
        ClusterOptions {
            binary,
            nodes,
            data_dir: None,
            base_port: None,
            server_args: Vec::new(),
            default_log: "info".to_string(),
            http: false,
        }
    }
}

/// One node of a local cluster.
#[derive(Debug)]
pub struct LocalNode {
    pub id: u64,
    pub addr: String,
    pub data_dir: PathBuf,
    pub log_path: PathBuf,
    /// Started with `--join`: it waits to be added to the running cluster.
    pub join: bool,
    /// Its `--http` address, with [`ClusterOptions::http`].
    pub http_addr: Option<String>,
    /// Arguments for this node only, after the cluster's `server_args`
    /// ([`LocalCluster::set_node_args`]).
    pub extra_args: Vec<String>,
    child: Option<Child>,
    paused: bool,
}

impl LocalNode {
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }
}

/// A cluster of node processes. Dropping it kills every node.
#[derive(Debug)]
pub struct LocalCluster {
    options: ClusterOptions,
    dir: PathBuf,
    temp: Option<tempfile::TempDir>,
    nodes: BTreeMap<u64, LocalNode>,
}

/// Ports free now, chosen below the kernel's ephemeral range
/// (`ip_local_port_range`, 32768 and up by default). A port taken from
/// that range (by binding port 0) can be handed by the kernel to any
/// outgoing connection of any process before the node binds it, which made
/// test nodes fail to start now and then; below it only a process that
/// binds that very port can take it. Successive calls in one process walk
/// the range from a random start, so concurrent clusters of one test run
/// never pick the same port. Another process may still bind one first; the
/// node then fails to start with a clear error.
pub fn free_ports(count: usize) -> io::Result<Vec<u16>> {
    use std::sync::atomic::AtomicU32;
    use std::sync::atomic::Ordering;
    const LOW: u32 = 10_000;
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let ephemeral_start = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse::<u32>().ok())
        .unwrap_or(32_768);
    let high = ephemeral_start.min(u32::from(u16::MAX) + 1);
    if high < LOW + 1_000 {
        // No room below the ephemeral range: let the OS choose.
        let listeners: Vec<_> =
            (0..count).map(|_| std::net::TcpListener::bind("127.0.0.1:0")).collect::<io::Result<_>>()?;
        return listeners.iter().map(|l| Ok(l.local_addr()?.port())).collect();
    }
    let span = high - LOW;
    if NEXT.load(Ordering::Relaxed) == 0 {
        let seed = std::process::id().wrapping_mul(2_654_435_761)
            ^ std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
        let _ = NEXT.compare_exchange(0, seed % span + 1, Ordering::Relaxed, Ordering::Relaxed);
    }
    // Held until every port is chosen, so one call never repeats a port.
    let mut listeners = Vec::with_capacity(count);
    for _ in 0..span {
        if listeners.len() == count {
            break;
        }
        let port = LOW + NEXT.fetch_add(1, Ordering::Relaxed) % span;
        if let Ok(listener) = std::net::TcpListener::bind(("127.0.0.1", port as u16)) {
            listeners.push(listener);
        }
    }
    if listeners.len() < count {
        return Err(io::Error::new(io::ErrorKind::AddrInUse, format!("fewer than {count} free ports below {high}")));
    }
    listeners.iter().map(|l| Ok(l.local_addr()?.port())).collect()
}

fn signal(pid: u32, sig: libc::c_int) -> io::Result<()> {
    // SAFETY: kill(2) has no memory effects; the pid is a child we own.
    let rc = unsafe { libc::kill(pid as libc::pid_t, sig) };
    if rc == 0 { Ok(()) } else { Err(io::Error::last_os_error()) }
}

impl LocalCluster {
    /// Lays out the cluster (directories, ports) without starting anything.
    pub fn new(options: ClusterOptions) -> io::Result<LocalCluster> {
        let (dir, temp) = match &options.data_dir {
            Some(dir) => {
                std::fs::create_dir_all(dir)?;
                (dir.clone(), None)
            }
            None => {
                let temp = tempfile::Builder::new().prefix("quorumq-").tempdir()?;
                (temp.path().to_path_buf(), Some(temp))
            }
        };
        let ports = match options.base_port {
            Some(base) => (0..options.nodes)
                .map(|i| {
                    base.checked_add(i as u16)
                        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "port out of range"))
                })
                .collect::<io::Result<Vec<_>>>()?,
            None => free_ports(options.nodes)?,
        };
        // Picked apart from the gRPC ports above: those were free again once
        // `free_ports` returned, so ask for all HTTP ports at once, while
        // holding none, and skip any that collide.
        let mut http_ports = Vec::new();
        if options.http {
            http_ports = free_ports(options.nodes * 2)?;
            http_ports.retain(|p| !ports.contains(p));
            if http_ports.len() < options.nodes {
                return Err(io::Error::other("not enough free ports for the HTTP endpoints"));
            }
        }
        let nodes = ports
            .into_iter()
            .enumerate()
            .map(|(i, port)| {
                let id = i as u64 + 1;
                let node = LocalNode {
                    id,
                    addr: format!("127.0.0.1:{port}"),
                    data_dir: dir.join(format!("node{id}")),
                    log_path: dir.join(format!("node{id}.log")),
                    join: false,
                    http_addr: http_ports.get(i).map(|p| format!("127.0.0.1:{p}")),
                    extra_args: Vec::new(),
                    child: None,
                    paused: false,
                };
                (id, node)
            })
            .collect();
        Ok(LocalCluster { options, dir, temp, nodes })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Keeps the data directory after drop (when it is a temporary one).
    pub fn keep_data(&mut self) -> PathBuf {
        if let Some(temp) = self.temp.take() {
            return temp.keep();
        }
        self.dir.clone()
    }

    pub fn ids(&self) -> Vec<u64> {
        self.nodes.keys().copied().collect()
    }

    pub fn node(&self, id: u64) -> &LocalNode {
        &self.nodes[&id]
    }

    pub fn addresses(&self) -> Vec<String> {
        self.nodes.values().map(|n| n.addr.clone()).collect()
    }

    /// The `--cluster` value for clients.
    pub fn cluster_arg(&self) -> String {
        self.addresses().join(",")
    }

    /// The `--peers` value for servers.
    pub fn peers_arg(&self) -> String {
        self.nodes.values().map(|n| format!("{}={}", n.id, n.addr)).collect::<Vec<_>>().join(",")
    }

    pub fn id_of(&self, addr: &str) -> Option<u64> {
        self.nodes.values().find(|n| n.addr == addr).map(|n| n.id)
    }

    /// Starts node `id` on its data directory (a restart if it ran before).
    pub fn start(&mut self, id: u64) -> io::Result<()> {
        let peers = self.peers_arg();
        let options = self.options.clone();
        let node = self.nodes.get_mut(&id).ok_or_else(|| io::Error::other(format!("no node {id}")))?;
        if node.child.is_some() {
            return Err(io::Error::other(format!("node {id} is already running")));
        }
        let log = OpenOptions::new().create(true).append(true).open(&node.log_path)?;
        let mut command = Command::new(&options.binary);
        command
            .arg("server")
            .args(["--id", &id.to_string()])
            .args(["--listen", &node.addr])
            .arg("--data-dir")
            .arg(&node.data_dir)
            .args(["--peers", &peers])
            .args(node.join.then_some("--join"))
            .args(&options.server_args)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        if let Some(http) = &node.http_addr {
            command.args(["--http", http]);
        }
        command.args(&node.extra_args);
        if std::env::var_os("RUST_LOG").is_none() {
            command.env("RUST_LOG", &options.default_log);
        }
        node.child = Some(command.spawn()?);
        node.paused = false;
        Ok(())
    }

    /// Lays out one more node (the next id, a free port) that joins the
    /// running cluster with `--join`; start it with [`LocalCluster::start`],
    /// then add it with `quorumq cluster add`. Returns its id.
    pub fn add_node(&mut self) -> io::Result<u64> {
        let id = self.nodes.keys().next_back().map_or(1, |last| last + 1);
        let ports = free_ports(2)?;
        let port = ports[0];
        let node = LocalNode {
            id,
            addr: format!("127.0.0.1:{port}"),
            data_dir: self.dir.join(format!("node{id}")),
            log_path: self.dir.join(format!("node{id}.log")),
            join: true,
            http_addr: self.options.http.then(|| format!("127.0.0.1:{}", ports[1])),
            extra_args: Vec::new(),
            child: None,
            paused: false,
        };
        self.nodes.insert(id, node);
        Ok(id)
    }

    /// Deletes the data directory of node `id` (which must be stopped), and
    /// marks it to start with `--join`: a replacement with the same id and
    /// address and no state.
    pub fn wipe(&mut self, id: u64) -> io::Result<()> {
        let node = self.nodes.get_mut(&id).ok_or_else(|| io::Error::other(format!("no node {id}")))?;
        if node.child.is_some() {
            return Err(io::Error::other(format!("node {id} is running")));
        }
        match std::fs::remove_dir_all(&node.data_dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        node.join = true;
        Ok(())
    }

    /// Sets the arguments node `id` gets, after the cluster's, from its next
    /// start on (for example to restart one node with `--memory-max`).
    pub fn set_node_args(&mut self, id: u64, args: Vec<String>) -> io::Result<()> {
        let node = self.nodes.get_mut(&id).ok_or_else(|| io::Error::other(format!("no node {id}")))?;
        node.extra_args = args;
        Ok(())
    }

    pub fn start_all(&mut self) -> io::Result<()> {
        for id in self.ids() {
            self.start(id)?;
        }
        Ok(())
    }

    pub fn is_running(&mut self, id: u64) -> bool {
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

    /// Node ids whose process exited by itself, with the exit status.
    pub fn exited(&mut self) -> Vec<(u64, std::process::ExitStatus)> {
        let mut exited = Vec::new();
        for node in self.nodes.values_mut() {
            if let Some(child) = node.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                exited.push((node.id, status));
                node.child = None;
            }
        }
        exited
    }

    /// SIGKILL: the process dies at once, with whatever it had not flushed.
    pub fn kill(&mut self, id: u64) -> io::Result<()> {
        let node = self.nodes.get_mut(&id).ok_or_else(|| io::Error::other(format!("no node {id}")))?;
        if let Some(mut child) = node.child.take() {
            child.kill()?;
            child.wait()?;
        }
        node.paused = false;
        Ok(())
    }

    /// SIGTERM, then SIGKILL if the node has not exited within `grace`.
    pub fn stop(&mut self, id: u64, grace: Duration) -> io::Result<()> {
        let node = self.nodes.get_mut(&id).ok_or_else(|| io::Error::other(format!("no node {id}")))?;
        let Some(mut child) = node.child.take() else { return Ok(()) };
        if node.paused {
            let _ = signal(child.id(), libc::SIGCONT);
            node.paused = false;
        }
        signal(child.id(), libc::SIGTERM)?;
        let deadline = Instant::now() + grace;
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

    pub fn stop_all(&mut self, grace: Duration) -> io::Result<()> {
        for id in self.ids() {
            self.stop(id, grace)?;
        }
        Ok(())
    }

    /// SIGSTOP: the process freezes, its connections stay open.
    pub fn pause(&mut self, id: u64) -> io::Result<()> {
        let node = self.nodes.get_mut(&id).ok_or_else(|| io::Error::other(format!("no node {id}")))?;
        if let Some(child) = &node.child {
            signal(child.id(), libc::SIGSTOP)?;
            node.paused = true;
        }
        Ok(())
    }

    /// SIGCONT after [`LocalCluster::pause`].
    pub fn resume(&mut self, id: u64) -> io::Result<()> {
        let node = self.nodes.get_mut(&id).ok_or_else(|| io::Error::other(format!("no node {id}")))?;
        if let Some(child) = &node.child {
            signal(child.id(), libc::SIGCONT)?;
            node.paused = false;
        }
        Ok(())
    }

    /// The last `lines` lines of a node's log, for failure reports.
    pub fn log_tail(&self, id: u64, lines: usize) -> String {
        let Ok(text) = std::fs::read_to_string(&self.nodes[&id].log_path) else { return String::new() };
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        for node in self.nodes.values_mut() {
            if let Some(mut child) = node.child.take() {
                if node.paused {
                    let _ = signal(child.id(), libc::SIGCONT);
                }
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}
