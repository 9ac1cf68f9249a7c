//! The compose backend: the Docker Compose cluster of `deploy/compose/`,
//! each node a container on its own address.
//!
//! The harness adds an override file to the deployment's compose file: a
//! fixed subnet with one static address per node (advertised in
//! `QUORUMQ_PEERS`, so that the leader hints nodes give are reachable from
//! the harness on the host), no automatic restarts (the nemesis decides when
//! a killed node comes back), and a project name of its own. Faults are real:
//! `docker kill -s KILL`, `docker stop`, `docker pause`, and iptables rules
//! run inside a container's network namespace with `nsenter`. Wiping a node
//! (the membership nemesis) removes its container and its data volume; the
//! override then gives it `QUORUMQ_JOIN=true` and the next start creates it
//! again (`up -d --no-deps nodeN`) on an empty volume.

use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::io;
use std::path::Path;
use std::path::PathBuf;

use crate::db::Db;
use crate::db::Grudge;
use crate::db::NodeId;
use crate::db::run;

const SUBNET: &str = "172.29.77";
const PROJECT: &str = "qqjepsen";

fn node_ip(id: NodeId) -> String {
    format!("{SUBNET}.{}", 10 + id)
}

fn node_port(id: NodeId) -> u16 {
    7000 + id as u16
}

pub struct ComposeDb {
    compose_file: PathBuf,
    override_file: PathBuf,
    log_dir: PathBuf,
    nodes: Vec<NodeId>,
    containers: BTreeMap<NodeId, String>,
    compose: Vec<String>,
    /// Wiped nodes: they start with `QUORUMQ_JOIN=true`.
    joining: BTreeSet<NodeId>,
    /// Wiped nodes whose container is gone: `start` creates it again.
    removed: BTreeSet<NodeId>,
    /// Wipes so far (names the logs saved from removed containers).
    wipes: u32,
}

/// `docker compose` (v2) when present, else `docker-compose` (v1).
fn compose_command() -> io::Result<Vec<String>> {
    if run("docker", &["compose", "version"]).is_ok() {
        return Ok(vec!["docker".into(), "compose".into()]);
    }
    if run("docker-compose", &["version"]).is_ok() {
        return Ok(vec!["docker-compose".into()]);
    }
    Err(io::Error::other("neither `docker compose` nor `docker-compose` is installed"))
}

impl ComposeDb {
    pub fn new(compose_file: PathBuf, n: u64, dir: &Path) -> io::Result<ComposeDb> {
        if !compose_file.exists() {
            return Err(io::Error::other(format!(
                "no compose file {} (run from the repository root, or pass --compose-file)",
                compose_file.display()
            )));
        }
        std::fs::create_dir_all(dir)?;
        let db = ComposeDb {
            compose_file,
            override_file: dir.join("compose-override.yml"),
            log_dir: dir.to_path_buf(),
            nodes: (1..=n).collect(),
            containers: BTreeMap::new(),
            compose: compose_command()?,
            joining: BTreeSet::new(),
            removed: BTreeSet::new(),
            wipes: 0,
        };
        db.write_override()?;
        Ok(db)
    }

    /// The override file: static addresses, no restarts, and
    /// `QUORUMQ_JOIN=true` for the wiped nodes.
    fn write_override(&self) -> io::Result<()> {
        let peers = self
            .nodes
            .iter()
            .map(|&id| format!("{id}={}:{}", node_ip(id), node_port(id)))
            .collect::<Vec<_>>()
            .join(",");
        let mut yaml = String::from("# Written by quorumq-jepsen: static addresses, no restarts.\nservices:\n");
        for &id in &self.nodes {
            let join = if self.joining.contains(&id) { "      QUORUMQ_JOIN: \"true\"\n" } else { "" };
            yaml.push_str(&format!(
                "  node{id}:\n    restart: \"no\"\n    environment:\n      QUORUMQ_PEERS: \"{peers}\"\n      RUST_LOG: \"info,openraft=warn\"\n{join}    networks:\n      quorumq:\n        ipv4_address: {}\n",
                node_ip(id)
            ));
        }
        yaml.push_str(&format!("networks:\n  quorumq:\n    ipam:\n      config:\n        - subnet: {SUBNET}.0/24\n"));
        std::fs::write(&self.override_file, yaml)
    }

    /// The container id of service `nodeN`, as compose knows it now.
    fn service_container(&self, id: NodeId) -> io::Result<String> {
        let name = self.compose(&["ps", "-q", &format!("node{id}")])?.trim().to_string();
        if name.is_empty() {
            return Err(io::Error::other(format!("node{id} did not start")));
        }
        Ok(name)
    }

    fn compose(&self, args: &[&str]) -> io::Result<String> {
        let files = [
            "-p",
            PROJECT,
            "-f",
            self.compose_file.to_str().unwrap_or_default(),
            "-f",
            self.override_file.to_str().unwrap_or_default(),
        ];
        let mut all: Vec<&str> = self.compose[1..].iter().map(String::as_str).collect();
        all.extend(files);
        all.extend(args);
        // Free host ports: the harness talks to the static addresses.
        let mut command = std::process::Command::new(&self.compose[0]);
        command.args(&all).stdin(std::process::Stdio::null());
        for id in &self.nodes {
            command.env(format!("QUORUMQ_PORT_{id}"), "0");
        }
        let out = command.output()?;
        if !out.status.success() {
            return Err(io::Error::other(format!(
                "`{} {}` failed: {}",
                self.compose.join(" "),
                all.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    fn container(&self, id: NodeId) -> io::Result<&str> {
        self.containers
            .get(&id)
            .map(String::as_str)
            .ok_or_else(|| io::Error::other(format!("no container for node {id}")))
    }

    fn pid(&self, id: NodeId) -> io::Result<String> {
        let pid = run("docker", &["inspect", "-f", "{{.State.Pid}}", self.container(id)?])?.trim().to_string();
        if pid == "0" {
            return Err(io::Error::other(format!("node {id} is not running")));
        }
        Ok(pid)
    }

    fn iptables(&self, id: NodeId, args: &[&str]) -> io::Result<()> {
        let pid = self.pid(id)?;
        let mut all = vec!["-t", pid.as_str(), "-n", "iptables"];
        all.extend(args);
        run("nsenter", &all).map(|_| ())
    }

    fn save_logs(&self) {
        for (&id, container) in &self.containers {
            if let Ok(out) = std::process::Command::new("docker").args(["logs", container]).output() {
                let mut text = out.stdout;
                text.extend(out.stderr);
                let _ = std::fs::create_dir_all(self.log_dir.join(format!("n{id}")));
                let _ = std::fs::write(self.log_dir.join(format!("n{id}/node.log")), text);
            }
        }
    }
}

impl Db for ComposeDb {
    fn nodes(&self) -> Vec<NodeId> {
        self.nodes.clone()
    }

    fn client_addr(&self, id: NodeId) -> String {
        format!("{}:{}", node_ip(id), node_port(id))
    }

    fn setup(&mut self) -> io::Result<()> {
        if run("docker", &["image", "inspect", "quorumq:local"]).is_err() && std::env::var_os("QUORUMQ_IMAGE").is_none()
        {
            return Err(io::Error::other("no image quorumq:local; build it with deploy/docker/build-image.sh"));
        }
        let _ = self.compose(&["down", "-v", "--remove-orphans"]);
        self.compose(&["up", "-d"])?;
        for &id in &self.nodes.clone() {
            let name = self.service_container(id)?;
            self.containers.insert(id, name);
        }
        Ok(())
    }

    fn start(&mut self, id: NodeId) -> io::Result<()> {
        if self.removed.contains(&id) {
            self.compose(&["up", "-d", "--no-deps", &format!("node{id}")])?;
            let name = self.service_container(id)?;
            self.containers.insert(id, name);
            self.removed.remove(&id);
            return Ok(());
        }
        run("docker", &["start", self.container(id)?]).map(|_| ())
    }

    fn kill(&mut self, id: NodeId) -> io::Result<()> {
        if self.removed.contains(&id) {
            return Ok(());
        }
        let container = self.container(id)?.to_string();
        if self.is_running(id) {
            let _ = run("docker", &["unpause", &container]);
            run("docker", &["kill", "-s", "KILL", &container])?;
        }
        Ok(())
    }

    fn stop(&mut self, id: NodeId) -> io::Result<()> {
        if self.removed.contains(&id) {
            return Ok(());
        }
        let container = self.container(id)?.to_string();
        let _ = run("docker", &["unpause", &container]);
        run("docker", &["stop", "-t", "10", &container]).map(|_| ())
    }

    fn pause(&mut self, id: NodeId) -> io::Result<()> {
        run("docker", &["pause", self.container(id)?]).map(|_| ())
    }

    fn resume(&mut self, id: NodeId) -> io::Result<()> {
        if self.removed.contains(&id) {
            return Ok(());
        }
        let container = self.container(id)?;
        let state = run("docker", &["inspect", "-f", "{{.State.Paused}}", container])?;
        if state.trim() == "true" {
            run("docker", &["unpause", container])?;
        }
        Ok(())
    }

    fn is_running(&mut self, id: NodeId) -> bool {
        if self.removed.contains(&id) {
            return false;
        }
        let Ok(container) = self.container(id) else { return false };
        run("docker", &["inspect", "-f", "{{.State.Running}}", container]).is_ok_and(|s| s.trim() == "true")
    }

    fn supports_partitions(&self) -> bool {
        true
    }

    fn partition(&mut self, grudge: &Grudge) -> io::Result<()> {
        self.heal()?;
        for (&a, dropped) in grudge {
            for &b in dropped {
                self.iptables(a, &["-A", "INPUT", "-s", &node_ip(b), "-j", "DROP"])?;
            }
        }
        Ok(())
    }

    fn heal(&mut self) -> io::Result<()> {
        for id in self.nodes() {
            // A node that is down has no rules left to flush.
            if self.is_running(id) {
                self.iptables(id, &["-F", "INPUT"])?;
            }
        }
        Ok(())
    }

    fn teardown(&mut self) -> io::Result<()> {
        self.save_logs();
        self.compose(&["down", "-v", "--remove-orphans"]).map(|_| ())
    }

    fn wipe(&mut self, id: NodeId) -> io::Result<()> {
        if self.removed.contains(&id) {
            return Ok(());
        }
        if self.is_running(id) {
            return Err(io::Error::other(format!("node {id} is running; stop it before wiping it")));
        }
        let container = self.container(id)?.to_string();
        let volume = run(
            "docker",
            &["inspect", "-f", "{{range .Mounts}}{{if eq .Destination \"/data\"}}{{.Name}}{{end}}{{end}}", &container],
        )?
        .trim()
        .to_string();
        // Keep the old container's log: removing the container drops it.
        self.wipes += 1;
        if let Ok(out) = std::process::Command::new("docker").args(["logs", &container]).output() {
            let mut text = out.stdout;
            text.extend(out.stderr);
            let _ = std::fs::create_dir_all(self.log_dir.join(format!("n{id}")));
            let _ = std::fs::write(self.log_dir.join(format!("n{id}/node-before-wipe-{}.log", self.wipes)), text);
        }
        self.compose(&["rm", "-s", "-f", &format!("node{id}")])?;
        self.containers.remove(&id);
        self.removed.insert(id);
        if !volume.is_empty() {
            run("docker", &["volume", "rm", &volume])?;
        }
        self.joining.insert(id);
        self.write_override()
    }
}
