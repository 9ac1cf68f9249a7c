//! The deployment files in deploy/, checked statically (there is no
//! Kubernetes cluster and no systemd here): every manifest parses, and the
//! pieces agree with each other — replicas and the peers list, the pods'
//! names and the peer addresses, ports, probes, labels and selectors,
//! volumes and mounts. That the server accepts the config files is checked
//! by the `quorumq` crate's unit tests (cli::config_file); here the server
//! binary is asked only for its flag names.

use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::path::Path;
use std::path::PathBuf;
use std::time::Duration;

use quorumq_tests::node_binary;
use serde_yaml::Value;

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

/// Every manifest of deploy/kubernetes/ but the kustomization, by kind.
struct Manifests {
    by_kind: BTreeMap<String, Vec<Value>>,
    kustomization: Value,
    files: BTreeSet<String>,
}

impl Manifests {
    fn load() -> Manifests {
        let dir = deploy_dir().join("kubernetes");
        let mut by_kind: BTreeMap<String, Vec<Value>> = BTreeMap::new();
        let mut kustomization = Value::Null;
        let mut files = BTreeSet::new();
        for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("read {}: {e}", dir.display())) {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            assert!(name.ends_with(".yaml"), "{name}: every file in deploy/kubernetes is a .yaml manifest");
            let text = std::fs::read_to_string(&path).unwrap();
            let doc: Value =
                serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{name}: not one YAML document: {e}"));
            let kind = str_at(&doc, &["kind"]).unwrap_or_else(|| panic!("{name}: no kind")).to_string();
            assert!(str_at(&doc, &["apiVersion"]).is_some(), "{name}: no apiVersion");
            if kind == "Kustomization" {
                kustomization = doc;
            } else {
                files.insert(name);
                by_kind.entry(kind).or_default().push(doc);
            }
        }
        Manifests { by_kind, kustomization, files }
    }

    /// The one object of `kind` (and `name`, when given).
    fn one(&self, kind: &str, name: Option<&str>) -> &Value {
        let all: Vec<&Value> = self
            .by_kind
            .get(kind)
            .into_iter()
            .flatten()
            .filter(|v| name.is_none_or(|n| str_at(v, &["metadata", "name"]) == Some(n)))
            .collect();
        assert_eq!(all.len(), 1, "expected one {kind} {name:?}, found {}", all.len());
        all[0]
    }
}

fn at<'a>(value: &'a Value, path: &[&str]) -> Option<&'a Value> {
    path.iter().try_fold(value, |v, key| v.get(*key))
}

fn str_at<'a>(value: &'a Value, path: &[&str]) -> Option<&'a str> {
    at(value, path).and_then(Value::as_str)
}

fn labels(value: Option<&Value>) -> BTreeMap<String, String> {
    let Some(Value::Mapping(map)) = value else { return BTreeMap::new() };
    map.iter().map(|(k, v)| (k.as_str().unwrap().to_string(), v.as_str().unwrap().to_string())).collect()
}

/// Whether every label of `selector` is in `labels` (with the same value).
fn selects(selector: &BTreeMap<String, String>, labels: &BTreeMap<String, String>) -> bool {
    !selector.is_empty() && selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// The port number a probe or Service `port` names in `container`: a
/// number, or the name of one of its ports.
fn container_port(container: &Value, port: &Value) -> u64 {
    if let Some(n) = port.as_u64() {
        return n;
    }
    let name = port.as_str().unwrap_or_else(|| panic!("port {port:?} is neither a number nor a name"));
    let ports = at(container, &["ports"]).and_then(Value::as_sequence).expect("the container has ports");
    ports
        .iter()
        .find(|p| str_at(p, &["name"]) == Some(name))
        .and_then(|p| at(p, &["containerPort"])?.as_u64())
        .unwrap_or_else(|| panic!("the container has no port named {name}"))
}

fn env_of<'a>(container: &'a Value, name: &str) -> Option<&'a str> {
    at(container, &["env"])?
        .as_sequence()?
        .iter()
        .find(|e| str_at(e, &["name"]) == Some(name))
        .and_then(|e| str_at(e, &["value"]))
}

fn port_of(addr: &str) -> u64 {
    addr.rsplit_once(':').and_then(|(_, p)| p.parse().ok()).unwrap_or_else(|| panic!("{addr:?} has no port"))
}

/// The server's flag names as config-file keys, from `quorumq server --help`.
fn server_keys() -> BTreeSet<String> {
    let out = quorumq_tests::run_cli(&node_binary!(), &["server", "--help"], None, Duration::from_secs(20));
    assert_eq!(out.code, Some(0), "{out:?}");
    // The option lines: `  -h, --help`, `      --data-dir <DATA_DIR>`.
    out.stdout
        .lines()
        .map(str::trim_start)
        .filter(|line| line.starts_with('-'))
        .filter_map(|line| line.split_whitespace().find_map(|w| w.strip_prefix("--")))
        .map(|flag| flag.trim_end_matches(|c: char| !c.is_ascii_alphanumeric()).replace('-', "_"))
        .collect()
}

#[test]
fn the_kubernetes_manifests_agree_with_each_other() {
    // Proves: every manifest in deploy/kubernetes parses and the kustomization lists exactly them; the StatefulSet, its headless Service, the client Service, the PodDisruptionBudget and the ConfigMap share one namespace and label selector; the ConfigMap's TOML names one peer per replica, each the stable DNS name of pod quorumq-(id-1) under the headless Service at the port the node listens on, derives ids from host names, and serves HTTP on the port the probes use; the volumes and mounts match the data and config paths.
    let m = Manifests::load();

    let listed: BTreeSet<String> = at(&m.kustomization, &["resources"])
        .and_then(Value::as_sequence)
        .expect("the kustomization lists its resources")
        .iter()
        .map(|r| r.as_str().unwrap().to_string())
        .collect();
    assert_eq!(listed, m.files, "kustomization.yaml resources and the files in deploy/kubernetes differ");

    let namespace = str_at(m.one("Namespace", None), &["metadata", "name"]).unwrap().to_string();
    for (kind, objects) in &m.by_kind {
        for object in objects.iter().filter(|_| kind != "Namespace") {
            let name = str_at(object, &["metadata", "name"]).unwrap_or("?");
            assert_eq!(str_at(object, &["metadata", "namespace"]), Some(namespace.as_str()), "{kind} {name}");
        }
    }

    let sts = m.one("StatefulSet", None);
    let sts_name = str_at(sts, &["metadata", "name"]).unwrap();
    let replicas = at(sts, &["spec", "replicas"]).and_then(Value::as_u64).expect("replicas");
    assert_eq!(replicas, 3);
    assert_eq!(str_at(sts, &["spec", "podManagementPolicy"]), Some("Parallel"));
    let selector = labels(at(sts, &["spec", "selector", "matchLabels"]));
    let pod_labels = labels(at(sts, &["spec", "template", "metadata", "labels"]));
    assert!(selects(&selector, &pod_labels), "the StatefulSet's selector does not match its pods' labels");

    let headless_name = str_at(sts, &["spec", "serviceName"]).expect("serviceName");
    let headless = m.one("Service", Some(headless_name));
    assert_eq!(str_at(headless, &["spec", "clusterIP"]), Some("None"), "the headless Service");
    assert_eq!(at(headless, &["spec", "publishNotReadyAddresses"]).and_then(Value::as_bool), Some(true));
    let pod_spec = at(sts, &["spec", "template", "spec"]).unwrap();
    let containers = at(pod_spec, &["containers"]).and_then(Value::as_sequence).expect("containers");
    assert_eq!(containers.len(), 1);
    let container = &containers[0];

    // The node: `server --config FILE`, the file from the ConfigMap.
    let args: Vec<&str> = at(container, &["args"])
        .and_then(Value::as_sequence)
        .expect("args")
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert_eq!(args.first(), Some(&"server"), "the image's entrypoint is quorumq; args start with the subcommand");
    let config_path = args.windows(2).find(|w| w[0] == "--config").map(|w| w[1]).expect("--config FILE");
    let (config_dir, config_file) = config_path.rsplit_once('/').unwrap();
    let mounts = at(container, &["volumeMounts"]).and_then(Value::as_sequence).expect("volumeMounts");
    let mount_of =
        |path: &str| mounts.iter().find(|v| str_at(v, &["mountPath"]) == Some(path)).and_then(|v| str_at(v, &["name"]));
    let config_volume = mount_of(config_dir).unwrap_or_else(|| panic!("nothing is mounted at {config_dir}"));
    let volumes = at(pod_spec, &["volumes"]).and_then(Value::as_sequence).expect("volumes");
    let config_map_name = volumes
        .iter()
        .find(|v| str_at(v, &["name"]) == Some(config_volume))
        .and_then(|v| str_at(v, &["configMap", "name"]))
        .expect("the config volume is a ConfigMap");
    let config_map = m.one("ConfigMap", Some(config_map_name));
    let toml_text =
        str_at(config_map, &["data", config_file]).unwrap_or_else(|| panic!("the ConfigMap has no {config_file}"));
    let config: toml::Table = toml_text.parse().unwrap_or_else(|e| panic!("the ConfigMap's {config_file}: {e}"));

    // Every key is a server flag. listen and data_dir come from the pod's
    // environment, which would beat the file: keep them out of it.
    let keys = server_keys();
    for key in config.keys() {
        assert!(keys.contains(&key.replace('-', "_")), "{config_file}: {key} is not a server flag ({keys:?})");
    }
    for key in ["listen", "data_dir", "id"] {
        assert!(!config.contains_key(key), "{config_file} sets {key}: the pod's environment or host name does");
    }
    assert_eq!(config.get("id_from_hostname").and_then(toml::Value::as_bool), Some(true));
    let listen = env_of(container, "QUORUMQ_LISTEN").expect("QUORUMQ_LISTEN");
    let grpc_port = container_port(container, &Value::from("grpc"));
    assert_eq!(port_of(listen), grpc_port, "QUORUMQ_LISTEN and the grpc container port");
    let data_dir = env_of(container, "QUORUMQ_DATA_DIR").expect("QUORUMQ_DATA_DIR");
    let data_volume = mount_of(data_dir).unwrap_or_else(|| panic!("nothing is mounted at the data dir {data_dir}"));
    let claims = at(sts, &["spec", "volumeClaimTemplates"]).and_then(Value::as_sequence).expect("volumeClaimTemplates");
    assert!(
        claims.iter().any(|c| str_at(c, &["metadata", "name"]) == Some(data_volume)),
        "the data mount {data_volume} is not a volumeClaimTemplate"
    );

    // One peer per replica: id i is pod {sts}-{i-1} under the headless
    // Service, at the port the node listens on.
    let peers = config.get("peers").and_then(toml::Value::as_str).expect("peers as a string");
    let peers: BTreeMap<u64, &str> = peers
        .split(',')
        .map(|entry| {
            let (id, addr) = entry.split_once('=').unwrap_or_else(|| panic!("peer entry {entry:?}"));
            (id.trim().parse().unwrap(), addr.trim())
        })
        .collect();
    assert_eq!(peers.keys().copied().collect::<Vec<_>>(), (1..=replicas).collect::<Vec<_>>(), "peer ids vs replicas");
    for (id, addr) in &peers {
        let host = format!("{sts_name}-{}.{headless_name}.{namespace}.svc.cluster.local", id - 1);
        assert_eq!(*addr, format!("{host}:{grpc_port}"), "peer {id}");
    }

    // Probes on the --http port: readiness /ready, liveness /health.
    let http = config.get("http").and_then(toml::Value::as_str).expect("http in the config");
    let http_port = port_of(http);
    assert_eq!(container_port(container, &Value::from("http")), http_port, "the http container port and `http`");
    for (probe, path) in [("readinessProbe", "/ready"), ("livenessProbe", "/health"), ("startupProbe", "/health")] {
        let get = at(container, &[probe, "httpGet"]).unwrap_or_else(|| panic!("no {probe}"));
        assert_eq!(str_at(get, &["path"]), Some(path), "{probe}");
        assert_eq!(container_port(container, &get["port"]), http_port, "{probe} port");
    }

    // Services and the budget select exactly the pods.
    for service in m.by_kind["Service"].iter() {
        let name = str_at(service, &["metadata", "name"]).unwrap();
        assert!(selects(&labels(at(service, &["spec", "selector"])), &pod_labels), "Service {name} selector");
        for port in at(service, &["spec", "ports"]).and_then(Value::as_sequence).expect("ports") {
            let target = container_port(container, port.get("targetPort").unwrap_or(&port["port"]));
            assert!([grpc_port, http_port].contains(&target), "Service {name} targets port {target}");
        }
    }
    let client = m.one("Service", Some("quorumq"));
    let client_ports: Vec<u64> = at(client, &["spec", "ports"])
        .and_then(Value::as_sequence)
        .unwrap()
        .iter()
        .map(|p| container_port(container, p.get("targetPort").unwrap_or(&p["port"])))
        .collect();
    assert_eq!(client_ports, [grpc_port], "the client Service serves the gRPC port");
    let pdb = m.one("PodDisruptionBudget", None);
    assert_eq!(at(pdb, &["spec", "maxUnavailable"]).and_then(Value::as_u64), Some(1));
    assert_eq!(labels(at(pdb, &["spec", "selector", "matchLabels"])), selector, "the PodDisruptionBudget's selector");
}

#[test]
fn the_systemd_unit_runs_the_example_config() {
    // Proves: the unit starts `quorumq server --config` on the file deploy/README.md installs, keeps its data in the StateDirectory the example config points at, restarts on failure but not on a configuration error (exit 2), and stops with SIGTERM; the example config sets only server flags and documents every one.
    let unit = std::fs::read_to_string(deploy_dir().join("systemd/quorumq.service")).unwrap();
    let settings: Vec<(&str, &str)> =
        unit.lines().filter(|l| !l.starts_with('#') && !l.starts_with('[')).filter_map(|l| l.split_once('=')).collect();
    let get = |key: &str| settings.iter().find(|(k, _)| *k == key).map(|(_, v)| *v);
    assert_eq!(get("ExecStart"), Some("/usr/local/bin/quorumq server --config /etc/quorumq/quorumq.toml"));
    assert_eq!(get("KillSignal"), Some("SIGTERM"));
    assert_eq!(get("Restart"), Some("on-failure"));
    assert_eq!(get("RestartPreventExitStatus"), Some("2"));
    assert_eq!(get("StateDirectory"), Some("quorumq"));

    let example = std::fs::read_to_string(deploy_dir().join("systemd/quorumq.toml")).unwrap();
    let config: toml::Table = example.parse().unwrap();
    assert_eq!(config.get("data_dir").and_then(toml::Value::as_str), Some("/var/lib/quorumq"));
    let keys = server_keys();
    for key in config.keys() {
        assert!(keys.contains(key), "quorumq.toml: {key} is not a server flag");
    }
    // Every flag (but --config, and the hidden test-only one) appears in
    // the example, set or commented out.
    for key in
        keys.iter().filter(|k| !["config", "help", "version", "cluster", "json", "timeout"].contains(&k.as_str()))
    {
        assert!(
            example.contains(&format!("\n{key} =")) || example.contains(&format!("\n#{key} =")),
            "quorumq.toml does not document {key}"
        );
    }
}
