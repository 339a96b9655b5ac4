//! The orchestrator manifests (deploy/kubernetes/*.yaml, deploy/nomad/*.hcl)
//! agree with the plugin and with each other: the driver name and topology
//! key are the ones ballast-server exports; the cluster layout is one
//! controller Deployment (provisioner with topology and capacity tracking,
//! resizer, leader election, its own controller-mode ballast) and a node
//! DaemonSet without provisioner or resizer; every ballast command line and
//! environment is one the real `ballast serve` accepts (parsed and resolved
//! by the binary's own code) and all join the same etcd; every sidecar
//! names the socket its pod's ballast serves; the node plugin has the
//! privileges and mounts it needs; RBAC grants what the sidecars use.
//! Parsing only: no cluster is involved.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use ballast::cli::{Cli, Command};
use ballast::config::{Config, StoreConfig};
use ballast_server::csi::{CsiMode, DRIVER_NAME, TOPOLOGY_KEY};
use clap::{ArgAction, CommandFactory, Parser};
use hcl::{Block, Body, Expression};
use yaml_rust2::{Yaml, YamlLoader};
/// The kubelet's directory, as the node plugin mounts it.
const KUBELET_DIR: &str = "/var/lib/kubelet";
/// StorageClass parameters the plugin takes, and its filesystems.
const PARAMETERS: [&str; 2] = ["pool", "fs"];
const FILESYSTEMS: [&str; 2] = ["ext4", "xfs"];

fn repo_path(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(rel)
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Files of one directory with one extension, sorted by name.
fn files(dir: &str, ext: &str) -> Vec<PathBuf> {
    let dir = repo_path(dir);
    let mut out: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.expect("directory entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == ext))
        .collect();
    out.sort();
    assert!(!out.is_empty(), "no *.{ext} in {}", dir.display());
    out
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .expect("a file name")
        .to_string_lossy()
        .into_owned()
}

/// One YAML document and the file it came from.
struct Doc {
    file: String,
    yaml: Yaml,
}

impl Doc {
    fn kind(&self) -> &str {
        self.yaml["kind"].as_str().unwrap_or("")
    }

    fn name(&self) -> &str {
        self.yaml["metadata"]["name"].as_str().unwrap_or("")
    }

    fn namespace(&self) -> Option<&str> {
        self.yaml["metadata"]["namespace"].as_str()
    }

    fn what(&self) -> String {
        format!("{} {}/{}", self.file, self.kind(), self.name())
    }
}

/// Every document of every deploy/kubernetes/*.yaml (empty ones skipped).
fn k8s_docs() -> Vec<Doc> {
    let mut docs = Vec::new();
    for path in files("deploy/kubernetes", "yaml") {
        let file = file_name(&path);
        let loaded = YamlLoader::load_from_str(&read(&path))
            .unwrap_or_else(|e| panic!("{file}: not YAML: {e}"));
        for yaml in loaded.into_iter().filter(|y| !y.is_null()) {
            docs.push(Doc {
                file: file.clone(),
                yaml,
            });
        }
    }
    docs
}

fn of_kind<'a>(docs: &'a [Doc], kind: &str) -> Vec<&'a Doc> {
    docs.iter().filter(|d| d.kind() == kind).collect()
}

fn only<'a>(docs: &'a [Doc], kind: &str) -> &'a Doc {
    match of_kind(docs, kind).as_slice() {
        [one] => one,
        other => panic!("want exactly one {kind}, found {}", other.len()),
    }
}

/// The pod specs of the workloads, with the document each is in.
fn pod_specs(docs: &[Doc]) -> Vec<(&Doc, &Yaml)> {
    docs.iter()
        .filter(|d| {
            matches!(
                d.kind(),
                "DaemonSet" | "Deployment" | "StatefulSet" | "Job" | "ReplicaSet"
            )
        })
        .map(|d| (d, &d.yaml["spec"]["template"]["spec"]))
        .chain(
            docs.iter()
                .filter(|d| d.kind() == "Pod")
                .map(|d| (d, &d.yaml["spec"])),
        )
        .collect()
}

fn list(y: &Yaml) -> &[Yaml] {
    y.as_vec().map_or(&[], Vec::as_slice)
}

fn containers(pod: &Yaml) -> impl Iterator<Item = &Yaml> {
    list(&pod["initContainers"])
        .iter()
        .chain(list(&pod["containers"]))
}

/// The container whose image is this sidecar (`.../csi-provisioner:v5`).
fn sidecar<'a>(pod: &'a Yaml, image: &str) -> Option<&'a Yaml> {
    containers(pod).find(|c| {
        c["image"]
            .as_str()
            .and_then(|i| i.rsplit('/').next())
            .is_some_and(|last| last.split(':').next() == Some(image))
    })
}

fn strings(y: &Yaml) -> Vec<&str> {
    list(y).iter().filter_map(Yaml::as_str).collect()
}

/// A container's command line: `command` then `args`.
fn command_line(c: &Yaml) -> Vec<&str> {
    let mut out = strings(&c["command"]);
    out.extend(strings(&c["args"]));
    out
}

/// The value of a flag given as `--name=value`, `--name value` (or with
/// one dash, as Go's flag package also reads them).
fn flag<'a>(argv: &[&'a str], name: &str) -> Option<&'a str> {
    argv.iter().enumerate().find_map(|(i, a)| {
        let bare = a.strip_prefix("--").or_else(|| a.strip_prefix('-'))?;
        match bare.split_once('=') {
            Some((k, v)) if k == name => Some(v),
            None if bare == name => argv.get(i + 1).copied(),
            _ => None,
        }
    })
}

fn has_flag(argv: &[&str], name: &str) -> bool {
    argv.iter().any(|a| {
        let bare = a.trim_start_matches('-');
        a.starts_with('-') && (bare == name || bare.split_once('=').is_some_and(|(k, _)| k == name))
    })
}

/// The env var's value source: `fieldRef.fieldPath`, or its literal value.
fn env<'a>(c: &'a Yaml, name: &str) -> Option<&'a str> {
    list(&c["env"])
        .iter()
        .find(|e| e["name"].as_str() == Some(name))
        .and_then(|e| {
            e["valueFrom"]["fieldRef"]["fieldPath"]
                .as_str()
                .or_else(|| e["value"].as_str())
        })
}

/// The host path behind a pod volume, if it is a hostPath volume.
fn host_path<'a>(pod: &'a Yaml, volume: &str) -> Option<&'a str> {
    list(&pod["volumes"])
        .iter()
        .find(|v| v["name"].as_str() == Some(volume))
        .and_then(|v| v["hostPath"]["path"].as_str())
}

/// A container's mounts as (mountPath, host path or "", propagation or "").
fn mounts<'a>(pod: &'a Yaml, c: &'a Yaml) -> Vec<(&'a str, &'a str, &'a str)> {
    list(&c["volumeMounts"])
        .iter()
        .map(|m| {
            let volume = m["name"].as_str().unwrap_or("");
            (
                m["mountPath"].as_str().unwrap_or(""),
                host_path(pod, volume).unwrap_or(""),
                m["mountPropagation"].as_str().unwrap_or(""),
            )
        })
        .collect()
}

/// The socket a container's command line names: `--csi-address PATH` or
/// `--csi-endpoint unix://PATH`.
fn socket(c: &Yaml) -> Option<&str> {
    let argv = command_line(c);
    flag(&argv, "csi-address").or_else(|| {
        flag(&argv, "csi-endpoint").map(|e| {
            e.strip_prefix("unix://")
                .unwrap_or_else(|| panic!("--csi-endpoint {e:?} is not unix://"))
        })
    })
}

/// Where a path inside a container is on the host, through its hostPath
/// mounts (the longest mount path that contains it).
fn on_host(pod: &Yaml, c: &Yaml, path: &str) -> Option<String> {
    mounts(pod, c)
        .into_iter()
        .filter(|(at, host, _)| !host.is_empty() && Path::new(path).starts_with(at))
        .max_by_key(|(at, _, _)| at.len())
        .map(|(at, host, _)| {
            let rest = Path::new(path)
                .strip_prefix(at)
                .expect("checked by the filter");
            Path::new(host).join(rest).to_string_lossy().into_owned()
        })
}

fn plugin_dir() -> String {
    format!("{KUBELET_DIR}/plugins/{DRIVER_NAME}")
}

// --- ballast serve, as the daemon would start from a manifest ---

/// The node the test pretends a DaemonSet pod runs on.
const SAMPLE_NODE: &str = "node-1";
/// The Nomad client the test pretends a system job runs on.
const SAMPLE_CLIENT: &str = "client-1";
/// For a Nomad variable without a default (given with -var at run time).
const SAMPLE_STORE: &str = "etcd://etcd.example:2379";

/// A pod name as a ReplicaSet or DaemonSet makes them.
fn sample_pod_name(d: &Doc) -> String {
    format!("{}-7d4b9c6f5-x2x4q", d.name())
}

/// `BALLAST_*` variable → (its flag, whether the flag takes a value), from
/// ballast's own command line: the root's global flags and `serve`'s.
fn ballast_variables() -> BTreeMap<String, (String, bool)> {
    let root = Cli::command();
    let serve = root
        .find_subcommand("serve")
        .expect("ballast has a serve command");
    root.get_arguments()
        .chain(serve.get_arguments())
        .filter_map(|a| {
            let var = a.get_env()?.to_str()?.to_string();
            let long = a.get_long()?.to_string();
            let takes_value = !matches!(
                a.get_action(),
                ArgAction::SetTrue | ArgAction::SetFalse | ArgAction::Count
            );
            Some((var, (long, takes_value)))
        })
        .collect()
}

/// How clap reads a boolean flag's variable.
fn truthy(v: &str) -> bool {
    !matches!(
        v.to_ascii_lowercase().as_str(),
        "" | "0" | "false" | "no" | "off" | "n" | "f"
    )
}

/// What `ballast serve` makes of this command line (argv[0] first) and
/// environment: clap's parse of the flags, each `BALLAST_*` variable read
/// as its flag where the flag is not given (as clap does), then the
/// daemon's own checks (`Config::resolve`: CSI mode, endpoint, node id,
/// labels, store URL...). A variable ballast does not read is an error: it
/// would be silently ignored.
fn ballast_serve(who: &str, argv: &[String], env: &BTreeMap<String, String>) -> Config {
    assert_eq!(
        argv.get(1).map(String::as_str),
        Some("serve"),
        "{who}: not `ballast serve`: {argv:?}"
    );
    let variables = ballast_variables();
    let mut args = argv.to_vec();
    let given: Vec<&str> = argv.iter().map(String::as_str).collect();
    let mut from_env = Vec::new();
    for (name, value) in env.iter().filter(|(k, _)| k.starts_with("BALLAST_")) {
        let (long, takes_value) = variables
            .get(name)
            .unwrap_or_else(|| panic!("{who}: {name} is not a variable ballast reads"));
        if has_flag(&given, long) {
            continue;
        }
        if *takes_value {
            from_env.push(format!("--{long}={value}"));
        } else if truthy(value) {
            from_env.push(format!("--{long}"));
        }
    }
    args.extend(from_env);
    let cli = Cli::try_parse_from(&args)
        .unwrap_or_else(|e| panic!("{who}: ballast refuses {args:?}:\n{e}"));
    let Command::Serve(serve) = cli.command else {
        panic!("{who}: {args:?} is not `ballast serve`")
    };
    Config::resolve(&serve)
        .unwrap_or_else(|e| panic!("{who}: ballast serve refuses {args:?}: {e:#}"))
}

fn is_serve(argv: &[&str]) -> bool {
    argv.first()
        .is_some_and(|a| Path::new(a).file_name() == Some("ballast".as_ref()))
        && argv.get(1) == Some(&"serve")
}

/// The ConfigMaps of the manifests: (namespace, name) → data.
fn config_maps(docs: &[Doc]) -> BTreeMap<(String, String), BTreeMap<String, String>> {
    of_kind(docs, "ConfigMap")
        .into_iter()
        .map(|d| {
            let data = d.yaml["data"]
                .as_hash()
                .into_iter()
                .flatten()
                .map(|(k, v)| {
                    let k = k
                        .as_str()
                        .unwrap_or_else(|| panic!("{}: key {k:?}", d.what()));
                    let v = v
                        .as_str()
                        .unwrap_or_else(|| panic!("{}: {k} is not a string", d.what()));
                    (k.to_string(), v.to_string())
                })
                .collect();
            (
                (
                    d.namespace().unwrap_or("default").to_string(),
                    d.name().to_string(),
                ),
                data,
            )
        })
        .collect()
}

/// A container's environment as the kubelet builds it, each variable with
/// where it came from (`configmap <name>`, `fieldRef`, `literal`):
/// `envFrom` ConfigMaps first, then `env`, which wins; the downward API
/// gives sample values (the node, the pod's name and namespace).
fn container_env(docs: &[Doc], d: &Doc, c: &Yaml) -> BTreeMap<String, (String, String)> {
    let ns = d.namespace().unwrap_or("default");
    let maps = config_maps(docs);
    let map = |name: &str| {
        maps.get(&(ns.to_string(), name.to_string()))
            .unwrap_or_else(|| panic!("{}: no ConfigMap {ns}/{name}", d.what()))
    };
    let mut out = BTreeMap::new();
    for from in list(&c["envFrom"]) {
        let name = from["configMapRef"]["name"]
            .as_str()
            .unwrap_or_else(|| panic!("{}: envFrom {from:?} is not a configMapRef", d.what()));
        let prefix = from["prefix"].as_str().unwrap_or("");
        for (k, v) in map(name) {
            out.insert(
                format!("{prefix}{k}"),
                (v.clone(), format!("configmap {name}")),
            );
        }
    }
    for e in list(&c["env"]) {
        let name = e["name"].as_str().expect("env name").to_string();
        let from = &e["valueFrom"];
        let value = if let Some(v) = e["value"].as_str() {
            (v.to_string(), "literal".to_string())
        } else if let Some(path) = from["fieldRef"]["fieldPath"].as_str() {
            let v = match path {
                "spec.nodeName" => SAMPLE_NODE.to_string(),
                "metadata.name" => sample_pod_name(d),
                "metadata.namespace" => ns.to_string(),
                other => panic!("{}: fieldRef {other} has no sample value", d.what()),
            };
            (v, "fieldRef".to_string())
        } else if let Some(cm) = from["configMapKeyRef"]["name"].as_str() {
            let key = from["configMapKeyRef"]["key"].as_str().expect("a key");
            let v = map(cm)
                .get(key)
                .unwrap_or_else(|| panic!("{}: ConfigMap {cm} has no {key}", d.what()));
            (v.clone(), format!("configmap {cm}"))
        } else {
            panic!(
                "{}: env {name}: value source {from:?} not understood",
                d.what()
            )
        };
        out.insert(name, value);
    }
    out
}

/// `$(VAR)` in a command line, as the kubelet expands it (an unknown
/// variable stays as written).
fn expand(s: &str, env: &BTreeMap<String, String>) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some(i) = rest.find("$(") {
        out.push_str(&rest[..i]);
        let after = &rest[i + 2..];
        match after.find(')').map(|j| (j, &after[..j])) {
            Some((j, var)) if env.contains_key(var) => {
                out.push_str(&env[var]);
                rest = &after[j + 1..];
            }
            _ => {
                out.push_str("$(");
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

/// A ballast container of a workload: who it is, and what `ballast serve`
/// makes of it.
struct Ballast<'a> {
    doc: &'a Doc,
    pod: &'a Yaml,
    container: &'a Yaml,
    env: BTreeMap<String, (String, String)>,
    config: Config,
}

impl Ballast<'_> {
    fn who(&self) -> String {
        format!(
            "{} {}",
            self.doc.what(),
            self.container["name"].as_str().unwrap_or("?")
        )
    }
}

/// Every container of every workload that runs `ballast serve`.
fn ballasts(docs: &[Doc]) -> Vec<Ballast<'_>> {
    let mut out = Vec::new();
    for (d, pod) in pod_specs(docs) {
        for c in containers(pod) {
            if !is_serve(&command_line(c)) {
                continue;
            }
            let env = container_env(docs, d, c);
            let values: BTreeMap<String, String> = env
                .iter()
                .map(|(k, (v, _))| (k.clone(), v.clone()))
                .collect();
            let argv: Vec<String> = command_line(c).iter().map(|a| expand(a, &values)).collect();
            let who = format!("{} {}", d.what(), c["name"].as_str().unwrap_or("?"));
            let config = ballast_serve(&who, &argv, &values);
            out.push(Ballast {
                doc: d,
                pod,
                container: c,
                env,
                config,
            });
        }
    }
    out
}

/// The one ballast of a pod.
fn pod_ballast<'a>(all: &'a [Ballast<'a>], pod: &Yaml) -> &'a Ballast<'a> {
    match all
        .iter()
        .filter(|b| std::ptr::eq(b.pod, pod))
        .collect::<Vec<_>>()
        .as_slice()
    {
        [one] => one,
        other => panic!("want one ballast in the pod, found {}", other.len()),
    }
}

/// The volume mounted at the longest mount path holding `path`.
fn volume_at<'a>(c: &'a Yaml, path: &str) -> Option<&'a str> {
    list(&c["volumeMounts"])
        .iter()
        .filter_map(|m| Some((m["mountPath"].as_str()?, m["name"].as_str()?)))
        .filter(|(at, _)| Path::new(path).starts_with(at))
        .max_by_key(|(at, _)| at.len())
        .map(|(_, name)| name)
}

fn pod_volume<'a>(pod: &'a Yaml, name: &str) -> &'a Yaml {
    list(&pod["volumes"])
        .iter()
        .find(|v| v["name"].as_str() == Some(name))
        .unwrap_or_else(|| panic!("no pod volume {name:?}"))
}

fn has_topology(argv: &[&str]) -> bool {
    flag(argv, "feature-gates").is_some_and(|g| g.split(',').any(|kv| kv.trim() == "Topology=true"))
}

/// A boolean Go flag that is on: `--name`, `--name=true`.
fn flag_on(argv: &[&str], name: &str) -> bool {
    has_flag(argv, name)
        && argv.iter().all(|a| {
            let bare = a.trim_start_matches('-');
            bare.split_once('=')
                .is_none_or(|(k, v)| k != name || v == "true")
        })
}

// --- RBAC ---

/// One permission: (namespace it holds in, None: every one; API group;
/// resource; verb).
type Grant = (Option<String>, String, String, String);

/// What a service account may do, through every binding of it.
fn grants(docs: &[Doc], ns: &str, sa: &str) -> Vec<Grant> {
    let rules_of =
        |kind: &str, name: &str, role_ns: Option<&str>| -> Vec<(String, String, String)> {
            let role = docs
                .iter()
                .find(|d| {
                    d.kind() == kind
                        && d.name() == name
                        && (kind == "ClusterRole" || d.namespace() == role_ns)
                })
                .unwrap_or_else(|| panic!("no {kind} {name}"));
            let mut out = Vec::new();
            for rule in list(&role.yaml["rules"]) {
                for g in strings(&rule["apiGroups"]) {
                    for r in strings(&rule["resources"]) {
                        for v in strings(&rule["verbs"]) {
                            out.push((g.to_string(), r.to_string(), v.to_string()));
                        }
                    }
                }
            }
            out
        };
    let mut out = Vec::new();
    for b in of_kind(docs, "ClusterRoleBinding")
        .into_iter()
        .chain(of_kind(docs, "RoleBinding"))
    {
        let bound = list(&b.yaml["subjects"]).iter().any(|s| {
            s["kind"].as_str() == Some("ServiceAccount")
                && s["name"].as_str() == Some(sa)
                && s["namespace"].as_str().or(b.namespace()) == Some(ns)
        });
        if !bound {
            continue;
        }
        let kind = b.yaml["roleRef"]["kind"].as_str().unwrap_or("");
        let name = b.yaml["roleRef"]["name"].as_str().unwrap_or("");
        // A RoleBinding grants only in its namespace, whatever it binds.
        let scope =
            (b.kind() == "RoleBinding").then(|| b.namespace().unwrap_or("default").to_string());
        for (g, r, v) in rules_of(kind, name, b.namespace()) {
            out.push((scope.clone(), g, r, v));
        }
    }
    out
}

/// Panic unless the grants allow each verb on group/resource in `ns`.
fn assert_allowed(
    who: &str,
    grants: &[Grant],
    ns: &str,
    group: &str,
    resource: &str,
    verbs: &[&str],
) {
    for verb in verbs {
        let ok = grants.iter().any(|(scope, g, r, v)| {
            scope.as_deref().is_none_or(|s| s == ns)
                && (g == group || g == "*")
                && (r == resource || r == "*")
                && (v == verb || v == "*")
        });
        assert!(ok, "{who}: may not {verb} {resource} ({group:?}) in {ns}");
    }
}
#[test]
fn every_document_has_api_version_kind_and_name() {
    let docs = k8s_docs();
    let mut seen = BTreeSet::new();
    for d in &docs {
        assert!(
            d.yaml["apiVersion"].as_str().is_some_and(|v| !v.is_empty()),
            "{}: no apiVersion",
            d.what()
        );
        assert!(!d.kind().is_empty(), "{}: no kind", d.what());
        assert!(!d.name().is_empty(), "{}: no metadata.name", d.what());
        assert!(
            seen.insert((d.kind().to_string(), d.namespace(), d.name().to_string())),
            "{}: defined twice",
            d.what()
        );
    }
}

#[test]
fn namespaced_objects_are_in_a_namespace_the_manifests_create() {
    let docs = k8s_docs();
    let namespaces: BTreeSet<&str> = of_kind(&docs, "Namespace")
        .iter()
        .map(|d| d.name())
        .collect();
    for d in &docs {
        if let Some(ns) = d.namespace() {
            assert!(
                namespaces.contains(ns),
                "{}: namespace {ns} is not created",
                d.what()
            );
        }
    }
    for kind in [
        "ServiceAccount",
        "ConfigMap",
        "DaemonSet",
        "Deployment",
        "Role",
        "RoleBinding",
    ] {
        for d in of_kind(&docs, kind) {
            assert!(d.namespace().is_some(), "{}: no namespace", d.what());
        }
    }
}

#[test]
fn csidriver_matches_the_plugin() {
    let docs = k8s_docs();
    let d = only(&docs, "CSIDriver");
    assert_eq!(d.name(), DRIVER_NAME);
    let spec = &d.yaml["spec"];
    assert_eq!(
        spec["attachRequired"].as_bool(),
        Some(false),
        "no ControllerPublish"
    );
    assert_eq!(spec["podInfoOnMount"].as_bool(), Some(false));
    assert_eq!(strings(&spec["volumeLifecycleModes"]), ["Persistent"]);
    assert_eq!(spec["storageCapacity"].as_bool(), Some(true));
    assert_eq!(spec["fsGroupPolicy"].as_str(), Some("File"));
}

#[test]
fn storage_classes_use_the_plugin_and_wait_for_first_consumer() {
    let docs = k8s_docs();
    let classes = of_kind(&docs, "StorageClass");
    assert!(!classes.is_empty(), "no StorageClass");
    let mut fs_seen = BTreeSet::new();
    let mut defaults = Vec::new();
    for c in &classes {
        let y = &c.yaml;
        assert_eq!(y["provisioner"].as_str(), Some(DRIVER_NAME), "{}", c.what());
        assert_eq!(
            y["volumeBindingMode"].as_str(),
            Some("WaitForFirstConsumer"),
            "{}: volumes are node-local",
            c.what()
        );
        assert_eq!(
            y["allowVolumeExpansion"].as_bool(),
            Some(true),
            "{}",
            c.what()
        );
        // Pool names are cluster-wide and a pool is on one node: a shipped
        // class naming one would place every volume on that node.
        assert!(
            y["parameters"]["pool"].is_badvalue(),
            "{}: names a pool; leave it out for each node's default pool",
            c.what()
        );
        for (k, v) in y["parameters"].as_hash().into_iter().flatten() {
            let k = k
                .as_str()
                .unwrap_or_else(|| panic!("{}: key {k:?}", c.what()));
            assert!(PARAMETERS.contains(&k), "{}: parameter {k:?}", c.what());
            let v = v
                .as_str()
                .unwrap_or_else(|| panic!("{}: {k} is not a string", c.what()));
            if k == "fs" {
                assert!(FILESYSTEMS.contains(&v), "{}: fs {v:?}", c.what());
                fs_seen.insert(v);
            }
        }
        if y["metadata"]["annotations"]["storageclass.kubernetes.io/is-default-class"].as_str()
            == Some("true")
        {
            defaults.push(c.name());
        }
    }
    assert_eq!(
        fs_seen.into_iter().collect::<Vec<_>>(),
        FILESYSTEMS,
        "a class per fs"
    );
    assert_eq!(defaults.len(), 1, "one default class: {defaults:?}");
}

#[test]
fn volume_snapshot_class_names_the_driver() {
    let docs = k8s_docs();
    let classes = of_kind(&docs, "VolumeSnapshotClass");
    assert!(!classes.is_empty(), "no VolumeSnapshotClass");
    for c in classes {
        assert_eq!(c.yaml["driver"].as_str(), Some(DRIVER_NAME), "{}", c.what());
    }
}

#[test]
fn node_daemonset_runs_a_privileged_ballast_with_the_kubelet_dir_bidirectional() {
    let docs = k8s_docs();
    let ds = only(&docs, "DaemonSet");
    let pod = &ds.yaml["spec"]["template"]["spec"];
    let all = ballasts(&docs);
    let node = pod_ballast(&all, pod);
    let ballast = node.container;
    assert_eq!(
        ballast["securityContext"]["privileged"].as_bool(),
        Some(true)
    );
    let cfg = &node.config;
    assert!(cfg.docker_socket.is_none(), "no Docker plugin in a pod");
    // The node id is the topology segment the kubelet registers: the
    // node's name, from the downward API.
    assert_eq!(cfg.node_id, SAMPLE_NODE, "--node-id is not the node's name");
    assert_ne!(
        cfg.csi_mode,
        CsiMode::Controller,
        "the node plugin must serve the Node service"
    );
    let m = mounts(pod, ballast);
    assert!(
        m.contains(&(KUBELET_DIR, KUBELET_DIR, "Bidirectional")),
        "kubelet dir not mounted Bidirectional: {m:?}"
    );
    for dir in ["/dev", "/var/lib/ballast", "/run/ballast"] {
        assert!(
            m.iter().any(|(at, host, _)| *at == dir && *host == dir),
            "{dir} not mounted from the host: {m:?}"
        );
    }
    // The pools' images live in the state dir: on the host, not in the pod.
    assert!(
        on_host(pod, ballast, &cfg.state_dir.to_string_lossy()).is_some(),
        "state dir {} is not on the host",
        cfg.state_dir.display()
    );
    // Volumes are mounted under the run dir and bound to staging paths: the
    // mounts must live on the host to outlive the container.
    assert!(
        m.contains(&("/run/ballast", "/run/ballast", "Bidirectional")),
        "{m:?}"
    );
    assert_eq!(cfg.run_dir, Path::new("/run/ballast"));

    let registrar = sidecar(pod, "csi-node-driver-registrar").expect("node-driver-registrar");
    let argv = command_line(registrar);
    let address = flag(&argv, "csi-address").expect("--csi-address");
    assert_eq!(Path::new(address), cfg.csi_socket, "registrar's socket");
    let registration =
        flag(&argv, "kubelet-registration-path").expect("--kubelet-registration-path");
    assert!(registration.contains(DRIVER_NAME), "{registration}");
    // The path the kubelet dials is where the registrar's socket is on the host.
    assert_eq!(
        on_host(pod, registrar, address).as_deref(),
        Some(registration)
    );
    assert!(
        mounts(pod, registrar)
            .iter()
            .any(|(_, host, _)| *host == format!("{KUBELET_DIR}/plugins_registry")),
        "registration dir not mounted"
    );

    // Snapshots are taken on the volume's node: a snapshotter per node, in
    // distributed mode, whose CreateSnapshot this node's ballast serves.
    let snapshotter = sidecar(pod, "csi-snapshotter").expect("node snapshotter");
    let argv = command_line(snapshotter);
    assert!(flag_on(&argv, "node-deployment"), "{argv:?}");
    assert_eq!(env(snapshotter, "NODE_NAME"), Some("spec.nodeName"));
    assert!(
        !has_flag(&argv, "leader-election"),
        "one snapshotter per node: {argv:?}"
    );
    assert_eq!(
        cfg.csi_mode,
        CsiMode::All,
        "the snapshotter beside it needs the Controller service too"
    );

    assert!(sidecar(pod, "livenessprobe").is_some(), "no livenessprobe");
    assert!(
        ballast["livenessProbe"]["httpGet"]["path"].as_str() == Some("/healthz"),
        "ballast has no liveness probe"
    );
}

/// Provisioning and expansion are the controller's, for every node: a
/// provisioner or resizer per node would answer the same claims twice.
#[test]
fn no_daemonset_runs_a_provisioner_or_resizer() {
    let docs = k8s_docs();
    let daemonsets = of_kind(&docs, "DaemonSet");
    assert!(!daemonsets.is_empty(), "no DaemonSet");
    for d in daemonsets {
        let pod = &d.yaml["spec"]["template"]["spec"];
        for image in ["csi-provisioner", "csi-resizer", "csi-attacher"] {
            assert!(sidecar(pod, image).is_none(), "{}: runs {image}", d.what());
        }
        // Distributed mode is the snapshotter's only (snapshots are taken
        // on the volume's node).
        for c in containers(pod) {
            if flag_on(&command_line(c), "node-deployment") {
                assert!(
                    sidecar(pod, "csi-snapshotter").is_some_and(|s| std::ptr::eq(s, c)),
                    "{}: {} runs in node-deployment mode",
                    d.what(),
                    c["name"].as_str().unwrap_or("?")
                );
            }
        }
    }
}

#[test]
fn controller_deployment_serves_every_node_with_leader_election() {
    let docs = k8s_docs();
    let deployment = only(&docs, "Deployment");
    let ns = deployment.namespace().expect("a namespace");
    let replicas = deployment.yaml["spec"]["replicas"].as_i64().unwrap_or(1);
    assert!(
        replicas >= 1,
        "replicas {replicas}: nothing would provision"
    );
    let pod = &deployment.yaml["spec"]["template"]["spec"];

    let provisioner = sidecar(pod, "csi-provisioner").expect("external-provisioner");
    let argv = command_line(provisioner);
    assert!(has_topology(&argv), "Topology=true: {argv:?}");
    assert!(
        flag_on(&argv, "enable-capacity"),
        "storage capacity tracking: {argv:?}"
    );
    // Owned by the Deployment: pod -> ReplicaSet -> Deployment.
    assert_eq!(
        flag(&argv, "capacity-ownerref-level"),
        Some("2"),
        "{argv:?}"
    );
    assert_eq!(env(provisioner, "NAMESPACE"), Some("metadata.namespace"));
    assert_eq!(env(provisioner, "POD_NAME"), Some("metadata.name"));
    assert!(
        !flag_on(&argv, "node-deployment"),
        "the central provisioner serves every node: {argv:?}"
    );
    assert!(sidecar(pod, "csi-resizer").is_some(), "no external-resizer");

    // Every controller sidecar elects a leader, in the pod's namespace.
    let mut elected = 0;
    for image in [
        "csi-provisioner",
        "csi-resizer",
        "csi-snapshotter",
        "csi-attacher",
    ] {
        let Some(c) = sidecar(pod, image) else {
            continue;
        };
        let values: BTreeMap<String, String> = container_env(&docs, deployment, c)
            .into_iter()
            .map(|(k, (v, _))| (k, v))
            .collect();
        let argv: Vec<String> = command_line(c).iter().map(|a| expand(a, &values)).collect();
        let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
        assert!(
            flag_on(&argv, "leader-election"),
            "{image} without leader election: {argv:?}"
        );
        if let Some(lns) = flag(&argv, "leader-election-namespace") {
            assert_eq!(lns, ns, "{image}: leases in {lns}");
        }
        elected += 1;
    }
    assert!(elected >= 2, "provisioner and resizer");
    assert!(sidecar(pod, "livenessprobe").is_some(), "no livenessprobe");

    // The sidecars' ballast: in the pod, controller service, on the same
    // etcd as the nodes; a daemon of its own, not a node's.
    let all = ballasts(&docs);
    let b = pod_ballast(&all, pod);
    let cfg = &b.config;
    assert!(
        matches!(cfg.csi_mode, CsiMode::Controller | CsiMode::All),
        "{}: CSI mode {:?} has no Controller service",
        b.who(),
        cfg.csi_mode
    );
    assert!(
        matches!(cfg.store, StoreConfig::Etcd(_)),
        "{}: not on the cluster's etcd",
        b.who()
    );
    assert_ne!(
        b.container["securityContext"]["privileged"].as_bool(),
        Some(true),
        "{}: the controller does no host work",
        b.who()
    );
    for v in list(&pod["volumes"]) {
        assert!(
            v["hostPath"].is_badvalue(),
            "{}: hostPath volume {:?}: the controller must not share a node's state or socket",
            deployment.what(),
            v["name"]
        );
    }
    // Each replica joins under a name of its own (a node id held by a live
    // daemon is refused): the pod's.
    assert_eq!(
        cfg.node_id,
        sample_pod_name(deployment),
        "{}: --node-id is not the pod's name",
        b.who()
    );
    assert!(cfg.docker_socket.is_none(), "no Docker plugin in a pod");
    // An emptyDir is world-writable, and ballast refuses such a state dir.
    for m in list(&b.container["volumeMounts"]) {
        let volume = pod_volume(pod, m["name"].as_str().expect("a volume name"));
        if !volume["emptyDir"].is_badvalue() {
            assert_ne!(
                Some(cfg.state_dir.as_path()),
                m["mountPath"].as_str().map(Path::new),
                "{}: the state dir is an emptyDir's root (world-writable)",
                b.who()
            );
        }
    }
}

/// All daemons share one store, named in one ConfigMap: none spells the
/// URL itself, and the ConfigMap holds only variables ballast reads.
#[test]
fn every_ballast_joins_the_same_etcd_named_in_one_configmap() {
    let docs = k8s_docs();
    let all = ballasts(&docs);
    let kinds: BTreeSet<&str> = all.iter().map(|b| b.doc.kind()).collect();
    assert_eq!(
        kinds,
        BTreeSet::from(["DaemonSet", "Deployment"]),
        "a ballast in the node DaemonSet and in the controller Deployment"
    );
    let mut sources = BTreeSet::new();
    let mut stores = Vec::new();
    for b in &all {
        let argv = command_line(b.container);
        assert!(
            !has_flag(&argv, "store"),
            "{}: --store on the command line; the ConfigMap names it",
            b.who()
        );
        let (url, source) = b
            .env
            .get("BALLAST_STORE")
            .unwrap_or_else(|| panic!("{}: no BALLAST_STORE", b.who()));
        assert!(
            source.starts_with("configmap "),
            "{}: BALLAST_STORE is a {source}, not from the ConfigMap",
            b.who()
        );
        assert!(
            url.starts_with("etcd://") || url.starts_with("etcds://"),
            "{}: store {url:?} is not etcd",
            b.who()
        );
        let StoreConfig::Etcd(_) = &b.config.store else {
            panic!("{}: ballast resolved no etcd store", b.who())
        };
        sources.insert(source.clone());
        stores.push(&b.config.store);
    }
    assert_eq!(
        sources.len(),
        1,
        "the store comes from several places: {sources:?}"
    );
    assert!(
        stores.windows(2).all(|w| w[0] == w[1]),
        "the daemons' stores differ: {stores:?}"
    );
    // The ConfigMap holds daemon settings only.
    let source = sources.into_iter().next().expect("one");
    let name = source.trim_start_matches("configmap ");
    let variables = ballast_variables();
    let maps = config_maps(&docs);
    let (_, data) = maps
        .iter()
        .find(|((_, n), _)| *n == name)
        .expect("the ConfigMap");
    for k in data.keys() {
        assert!(
            variables.contains_key(k),
            "ConfigMap {name}: {k} is not a variable ballast reads"
        );
    }
}

/// Every socket argument in a pod names the socket its ballast serves, in
/// a volume the pod's containers share. The node plugin's is in the
/// kubelet's plugin dir (where the registrar tells the kubelet to look);
/// the controller's is its own, never a node plugin's.
#[test]
fn each_pods_sidecars_name_the_socket_its_ballast_serves() {
    let docs = k8s_docs();
    let all = ballasts(&docs);
    let mut users = BTreeSet::new();
    for (d, pod) in pod_specs(&docs) {
        let b = pod_ballast(&all, pod);
        let sock = b.config.csi_socket.to_string_lossy().into_owned();
        let volume = volume_at(b.container, &sock)
            .unwrap_or_else(|| panic!("{}: socket {sock} is on no volume", b.who()));
        for c in containers(pod) {
            let name = c["name"].as_str().unwrap_or("?");
            let Some(path) = socket(c)
                .map(str::to_string)
                .or_else(|| is_serve(&command_line(c)).then(|| sock.clone()))
            else {
                continue;
            };
            let who = format!("{} {name}", d.what());
            assert_eq!(path, sock, "{who}: not the socket ballast serves");
            assert_eq!(
                volume_at(c, &path),
                Some(volume),
                "{who}: the socket's directory is not the shared volume {volume}"
            );
            users.insert((d.kind().to_string(), name.to_string()));
        }
        let v = pod_volume(pod, volume);
        if d.kind() == "DaemonSet" {
            assert_eq!(
                on_host(pod, b.container, &sock),
                Some(format!("{}/csi.sock", plugin_dir())),
                "{}: the node plugin's socket is not in the kubelet's plugin dir",
                d.what()
            );
        } else {
            assert!(
                !v["emptyDir"].is_badvalue(),
                "{}: the socket volume {volume} is not the pod's own (emptyDir)",
                d.what()
            );
        }
    }
    for (kind, name) in [
        ("DaemonSet", "ballast"),
        ("DaemonSet", "node-driver-registrar"),
        ("DaemonSet", "livenessprobe"),
        ("Deployment", "ballast"),
        ("Deployment", "csi-provisioner"),
        ("Deployment", "csi-resizer"),
        ("Deployment", "livenessprobe"),
    ] {
        assert!(
            users.contains(&(kind.to_string(), name.to_string())),
            "{kind} {name} names no socket: {users:?}"
        );
    }
}

/// What the sidecars' own RBAC files (kubernetes-csi/external-*/deploy)
/// grant and they use, for the account each pod runs as.
#[test]
fn rbac_grants_what_the_sidecars_use() {
    let docs = k8s_docs();
    let mut checked = BTreeSet::new();
    for (d, pod) in pod_specs(&docs) {
        let ns = d.namespace().unwrap_or("default");
        let sa = pod["serviceAccountName"]
            .as_str()
            .expect("serviceAccountName");
        let g = grants(&docs, ns, sa);
        let who = |image: &str| format!("{} {image} as {ns}/{sa}", d.what());
        if let Some(c) = sidecar(pod, "csi-provisioner") {
            let argv = command_line(c);
            let w = who("csi-provisioner");
            assert_allowed(
                &w,
                &g,
                ns,
                "",
                "persistentvolumes",
                &["get", "list", "watch", "create", "delete"],
            );
            assert_allowed(
                &w,
                &g,
                ns,
                "",
                "persistentvolumeclaims",
                &["get", "list", "watch", "update"],
            );
            assert_allowed(
                &w,
                &g,
                ns,
                "storage.k8s.io",
                "storageclasses",
                &["get", "list", "watch"],
            );
            assert_allowed(&w, &g, ns, "", "events", &["create", "patch"]);
            if has_topology(&argv) {
                assert_allowed(
                    &w,
                    &g,
                    ns,
                    "storage.k8s.io",
                    "csinodes",
                    &["get", "list", "watch"],
                );
                assert_allowed(&w, &g, ns, "", "nodes", &["get", "list", "watch"]);
            }
            if flag_on(&argv, "enable-capacity") {
                assert_allowed(
                    &w,
                    &g,
                    ns,
                    "storage.k8s.io",
                    "csistoragecapacities",
                    &["get", "list", "watch", "create", "update", "delete"],
                );
                // Walking up to the owner: the pod, then (level 2) its ReplicaSet.
                let level: u32 = flag(&argv, "capacity-ownerref-level")
                    .unwrap_or("1")
                    .parse()
                    .expect("a number");
                if level >= 1 {
                    assert_allowed(&w, &g, ns, "", "pods", &["get"]);
                }
                if level >= 2 {
                    assert_allowed(&w, &g, ns, "apps", "replicasets", &["get"]);
                }
            }
            checked.insert("csi-provisioner");
        }
        if sidecar(pod, "csi-resizer").is_some() {
            let w = who("csi-resizer");
            assert_allowed(
                &w,
                &g,
                ns,
                "",
                "persistentvolumes",
                &["get", "list", "watch", "patch"],
            );
            assert_allowed(
                &w,
                &g,
                ns,
                "",
                "persistentvolumeclaims",
                &["get", "list", "watch"],
            );
            assert_allowed(&w, &g, ns, "", "persistentvolumeclaims/status", &["patch"]);
            assert_allowed(&w, &g, ns, "", "events", &["create", "patch"]);
            checked.insert("csi-resizer");
        }
        if sidecar(pod, "csi-snapshotter").is_some() {
            let w = who("csi-snapshotter");
            assert_allowed(
                &w,
                &g,
                ns,
                "snapshot.storage.k8s.io",
                "volumesnapshotclasses",
                &["get", "list", "watch"],
            );
            assert_allowed(
                &w,
                &g,
                ns,
                "snapshot.storage.k8s.io",
                "volumesnapshotcontents",
                &["get", "list", "watch", "update", "patch"],
            );
            assert_allowed(
                &w,
                &g,
                ns,
                "snapshot.storage.k8s.io",
                "volumesnapshotcontents/status",
                &["update", "patch"],
            );
            checked.insert("csi-snapshotter");
        }
        for c in containers(pod) {
            if flag_on(&command_line(c), "leader-election") {
                let w = who(c["name"].as_str().unwrap_or("?"));
                assert_allowed(
                    &w,
                    &g,
                    ns,
                    "coordination.k8s.io",
                    "leases",
                    &["get", "create", "update"],
                );
                checked.insert("leader election");
            }
        }
    }
    assert_eq!(
        checked,
        BTreeSet::from([
            "csi-provisioner",
            "csi-resizer",
            "csi-snapshotter",
            "leader election"
        ]),
        "sidecars whose RBAC was checked"
    );
}
#[test]
fn every_container_has_an_image_and_sidecars_are_pinned() {
    let docs = k8s_docs();
    for (d, pod) in pod_specs(&docs) {
        assert!(
            containers(pod).next().is_some(),
            "{}: no containers",
            d.what()
        );
        for c in containers(pod) {
            let name = c["name"].as_str().unwrap_or("?");
            let image = c["image"].as_str().unwrap_or("");
            assert!(!image.trim().is_empty(), "{} {name}: no image", d.what());
            if image.starts_with("registry.k8s.io/") {
                let tag = image.rsplit_once(':').map(|(_, t)| t).unwrap_or("");
                assert!(
                    tag.starts_with('v'),
                    "{} {name}: {image} is not pinned",
                    d.what()
                );
            }
        }
    }
}

#[test]
fn pods_run_as_service_accounts_that_exist_and_bindings_resolve() {
    let docs = k8s_docs();
    let accounts: BTreeSet<(&str, &str)> = of_kind(&docs, "ServiceAccount")
        .iter()
        .map(|d| (d.namespace().unwrap_or("default"), d.name()))
        .collect();
    for (d, pod) in pod_specs(&docs) {
        let sa = pod["serviceAccountName"]
            .as_str()
            .unwrap_or_else(|| panic!("{}: no serviceAccountName", d.what()));
        let ns = d.namespace().unwrap_or("default");
        assert!(
            accounts.contains(&(ns, sa)),
            "{}: no ServiceAccount {ns}/{sa}",
            d.what()
        );
    }
    let cluster_roles: BTreeSet<&str> = of_kind(&docs, "ClusterRole")
        .iter()
        .map(|d| d.name())
        .collect();
    let roles: BTreeSet<(&str, &str)> = of_kind(&docs, "Role")
        .iter()
        .map(|d| (d.namespace().unwrap_or("default"), d.name()))
        .collect();
    for b in of_kind(&docs, "ClusterRoleBinding")
        .into_iter()
        .chain(of_kind(&docs, "RoleBinding"))
    {
        let role = &b.yaml["roleRef"];
        let name = role["name"].as_str().unwrap_or("");
        match role["kind"].as_str() {
            Some("ClusterRole") => assert!(cluster_roles.contains(name), "{}: {name}", b.what()),
            Some("Role") => assert!(
                roles.contains(&(b.namespace().unwrap_or("default"), name)),
                "{}: {name}",
                b.what()
            ),
            other => panic!("{}: roleRef kind {other:?}", b.what()),
        }
        for s in list(&b.yaml["subjects"]) {
            if s["kind"].as_str() == Some("ServiceAccount") {
                let key = (
                    s["namespace"].as_str().unwrap_or("default"),
                    s["name"].as_str().unwrap_or(""),
                );
                assert!(accounts.contains(&key), "{}: subject {key:?}", b.what());
            }
        }
    }
}

#[test]
fn kustomization_lists_every_manifest_but_the_snapshot_class() {
    let docs = k8s_docs();
    let k = only(&docs, "Kustomization");
    let listed: BTreeSet<&str> = strings(&k.yaml["resources"]).into_iter().collect();
    let want: BTreeSet<String> = files("deploy/kubernetes", "yaml")
        .iter()
        .map(|p| file_name(p))
        .filter(|f| f != &k.file && f != "volumesnapshotclass.yaml")
        .collect();
    assert_eq!(listed, want.iter().map(String::as_str).collect());
}

/// Every `topology.<...>/<...>` key written anywhere under deploy/ (values,
/// comments, READMEs) is the plugin's.
#[test]
fn topology_keys_in_deploy_files_are_the_plugins() {
    let mut texts = Vec::new();
    for (dir, ext) in [
        ("deploy/kubernetes", "yaml"),
        ("deploy/kubernetes", "md"),
        ("deploy/nomad", "hcl"),
    ] {
        texts.extend(files(dir, ext));
    }
    let mut found = 0;
    for path in texts {
        let text = read(&path);
        for (i, _) in text.match_indices("topology.") {
            let key: String = text[i..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '/' | '-' | '_'))
                .collect();
            let key = key.trim_end_matches('.');
            if key.contains('/') {
                assert_eq!(key, TOPOLOGY_KEY, "{}", path.display());
                found += 1;
            }
        }
    }
    assert!(found > 0, "no topology key written anywhere");
}

// --- Nomad ---

fn hcl_file(rel: &str) -> Body {
    let path = repo_path(rel);
    hcl::parse(&read(&path)).unwrap_or_else(|e| panic!("{rel}: not HCL: {e}"))
}

fn blocks<'a>(body: &'a Body, name: &'a str) -> impl Iterator<Item = &'a Block> + 'a {
    body.blocks().filter(move |b| b.identifier() == name)
}

fn one_block<'a>(body: &'a Body, name: &str) -> &'a Block {
    let found: Vec<&Block> = body.blocks().filter(|b| b.identifier() == name).collect();
    match found.as_slice() {
        [one] => one,
        other => panic!("want one {name} block, found {}", other.len()),
    }
}

fn attr<'a>(body: &'a Body, key: &str) -> Option<&'a Expression> {
    body.attributes().find(|a| a.key() == key).map(|a| a.expr())
}

/// A string attribute: a plain string, or a template's source text.
fn text<'a>(body: &'a Body, key: &str) -> Option<&'a str> {
    attr(body, key).and_then(expr_text)
}

fn expr_text(e: &Expression) -> Option<&str> {
    match e {
        Expression::String(s) => Some(s),
        Expression::TemplateExpr(t) => match t.as_ref() {
            hcl::TemplateExpr::QuotedString(s) => Some(s),
            hcl::TemplateExpr::Heredoc(_) => None,
        },
        _ => None,
    }
}

/// One `csi_plugin` task of a Nomad job file, with its job's and group's
/// settings and what `ballast serve` makes of its command line.
struct NomadPlugin {
    /// file, job, group, task
    who: String,
    job_type: String,
    count: i64,
    id: String,
    kind: String,
    mount_dir: String,
    privileged: bool,
    volumes: Vec<String>,
    argv: Vec<String>,
    /// Variable → (value, where it came from: `variable <name>` or `literal`).
    env: BTreeMap<String, (String, String)>,
    config: Config,
}

/// What Nomad interpolates in a task's strings, with sample values.
fn nomad_interpolate(s: &str) -> String {
    s.replace("${node.unique.name}", SAMPLE_CLIENT)
        .replace("${NOMAD_ALLOC_ID}", "5b1a7e0c-3f4d-4c2e-9a51-0d6f2b8e7c11")
        .replace("${NOMAD_ALLOC_INDEX}", "0")
}

/// An attribute's value as Nomad would use it, and where it came from: a
/// string, a number or bool, or `var.NAME` (the job variable's default, or
/// a sample for one given at run time).
fn nomad_value(
    e: &Expression,
    vars: &BTreeMap<String, Option<String>>,
    who: &str,
) -> (String, String) {
    if let Some(t) = expr_text(e) {
        return (nomad_interpolate(t), "literal".into());
    }
    match e {
        Expression::Number(n) => (n.to_string(), "literal".into()),
        Expression::Bool(b) => (b.to_string(), "literal".into()),
        Expression::Traversal(t) => {
            let name = match (&t.expr, t.operators.as_slice()) {
                (Expression::Variable(v), [hcl::expr::TraversalOperator::GetAttr(name)])
                    if v.as_str() == "var" =>
                {
                    name.as_str()
                }
                _ => panic!("{who}: {e:?} is not var.NAME"),
            };
            let value = match vars.get(name) {
                Some(Some(default)) => default.clone(),
                Some(None) if name == "store" => SAMPLE_STORE.into(),
                Some(None) => panic!("{who}: variable {name} has no default and no sample"),
                None => panic!("{who}: var.{name} is not declared"),
            };
            (value, format!("variable {name}"))
        }
        other => panic!("{who}: {other:?} not understood"),
    }
}

/// Every csi_plugin task of every deploy/nomad/*.nomad.hcl (one job each).
fn nomad_plugins() -> Vec<NomadPlugin> {
    let mut out = Vec::new();
    for path in files("deploy/nomad", "hcl") {
        let file = file_name(&path);
        if !file.ends_with(".nomad.hcl") {
            continue;
        }
        let body = hcl_file(&format!("deploy/nomad/{file}"));
        let vars: BTreeMap<String, Option<String>> = blocks(&body, "variable")
            .map(|v| {
                let name = v.labels().first().expect("a variable's name").as_str();
                let default = attr(v.body(), "default")
                    .map(|d| expr_text(d).expect("a string default").to_string());
                (name.to_string(), default)
            })
            .collect();
        let job = one_block(&body, "job");
        let job_type = text(job.body(), "type").unwrap_or("service").to_string();
        for group in blocks(job.body(), "group") {
            let count = match attr(group.body(), "count") {
                None => 1,
                Some(Expression::Number(n)) => n.as_i64().expect("an integer count"),
                Some(other) => panic!("{file}: count {other:?}"),
            };
            for task in blocks(group.body(), "task") {
                let Some(plugin) = blocks(task.body(), "csi_plugin").next() else {
                    continue;
                };
                let label = |b: &Block| b.labels().first().map_or("?", |l| l.as_str()).to_string();
                let who = format!(
                    "{file} job {} group {} task {}",
                    label(job),
                    label(group),
                    label(task)
                );
                let plugin = plugin.body();
                let config = one_block(task.body(), "config").body();
                let mut argv = vec![text(config, "command").unwrap_or("?").to_string()];
                match attr(config, "args") {
                    Some(Expression::Array(items)) => argv.extend(
                        items
                            .iter()
                            .map(|a| nomad_interpolate(expr_text(a).expect("a string argument"))),
                    ),
                    other => panic!("{who}: config.args: {other:?}"),
                }
                let volumes = match attr(config, "volumes") {
                    Some(Expression::Array(items)) => items
                        .iter()
                        .map(|v| expr_text(v).expect("a string").to_string())
                        .collect(),
                    _ => Vec::new(),
                };
                let env: BTreeMap<String, (String, String)> = blocks(task.body(), "env")
                    .flat_map(|b| b.body().attributes())
                    .map(|a| (a.key().to_string(), nomad_value(a.expr(), &vars, &who)))
                    .collect();
                let values = env
                    .iter()
                    .map(|(k, (v, _))| (k.clone(), v.clone()))
                    .collect();
                let config_ = ballast_serve(&who, &argv, &values);
                out.push(NomadPlugin {
                    job_type: job_type.clone(),
                    count,
                    id: text(plugin, "id").expect("csi_plugin id").to_string(),
                    kind: text(plugin, "type").expect("csi_plugin type").to_string(),
                    mount_dir: text(plugin, "mount_dir")
                        .expect("csi_plugin mount_dir")
                        .to_string(),
                    privileged: attr(config, "privileged") == Some(&Expression::Bool(true)),
                    volumes,
                    argv,
                    env,
                    config: config_,
                    who,
                });
            }
        }
    }
    assert!(!out.is_empty(), "no Nomad job runs a csi_plugin");
    out
}

/// Nomad's CSI plugins need a controller (for `nomad volume create`,
/// delete, expand) and a node plugin on every client. Any ballast's
/// Controller service serves the whole cluster, so a monolith on every
/// client covers both; a controller-type plugin is a service job.
#[test]
fn nomad_jobs_run_the_plugin_as_controller_and_on_every_client() {
    let plugins = nomad_plugins();
    let ids: BTreeSet<&str> = plugins.iter().map(|p| p.id.as_str()).collect();
    assert_eq!(ids.len(), 1, "one plugin id: {ids:?}");
    let mut controller = false;
    let mut node = false;
    for p in &plugins {
        match p.kind.as_str() {
            "monolith" | "node" => {
                assert_eq!(
                    p.job_type, "system",
                    "{}: a node plugin on every client",
                    p.who
                );
                node = true;
                controller |= p.kind == "monolith";
            }
            "controller" => {
                assert_eq!(p.job_type, "service", "{}", p.who);
                assert!(p.count >= 1, "{}: count {}", p.who, p.count);
                controller = true;
            }
            other => panic!("{}: csi_plugin type {other:?}", p.who),
        }
    }
    assert!(controller, "no controller plugin");
    assert!(node, "no node plugin");
}

#[test]
fn nomad_plugins_run_a_ballast_serve_that_matches_their_type() {
    let plugins = nomad_plugins();
    let mut stores = Vec::new();
    for p in &plugins {
        let cfg = &p.config;
        let served = match p.kind.as_str() {
            "monolith" => cfg.csi_mode == CsiMode::All,
            "node" => matches!(cfg.csi_mode, CsiMode::Node | CsiMode::All),
            "controller" => matches!(cfg.csi_mode, CsiMode::Controller | CsiMode::All),
            _ => false,
        };
        assert!(
            served,
            "{}: {} plugin serving CSI mode {:?}",
            p.who, p.kind, cfg.csi_mode
        );
        assert_eq!(
            cfg.csi_socket.parent(),
            Some(Path::new(&p.mount_dir)),
            "{}: the socket is not in mount_dir",
            p.who
        );
        assert!(cfg.docker_socket.is_none(), "{}: no Docker plugin", p.who);
        if p.kind != "controller" {
            assert!(
                p.privileged,
                "{}: loop devices and mounts need privileged",
                p.who
            );
            // The client's name: the topology segment Nomad places by.
            assert_eq!(cfg.node_id, SAMPLE_CLIENT, "{}: --node-id", p.who);
            for v in [
                "/dev:/dev",
                "/var/lib/ballast:/var/lib/ballast",
                "/run/ballast:/run/ballast:rshared",
            ] {
                assert!(
                    p.volumes.iter().any(|m| m == v),
                    "{}: no volume {v}: {:?}",
                    p.who,
                    p.volumes
                );
            }
        }
        // The cluster's etcd, from the job's one variable.
        let argv: Vec<&str> = p.argv.iter().map(String::as_str).collect();
        assert!(
            !has_flag(&argv, "store"),
            "{}: --store on the command line",
            p.who
        );
        let (_, source) = p
            .env
            .get("BALLAST_STORE")
            .unwrap_or_else(|| panic!("{}: no BALLAST_STORE", p.who));
        assert!(
            source.starts_with("variable "),
            "{}: BALLAST_STORE is a {source}",
            p.who
        );
        assert!(
            matches!(cfg.store, StoreConfig::Etcd(_)),
            "{}: not on etcd",
            p.who
        );
        stores.push(&cfg.store);
    }
    assert!(
        stores.windows(2).all(|w| w[0] == w[1]),
        "the plugins' stores differ: {stores:?}"
    );
}

/// The plugin id the volumes name.
fn nomad_plugin_id() -> String {
    nomad_plugins().remove(0).id
}

/// A topology block's segment keys and the node it names.
fn nomad_segment(topology: &Block) -> (Vec<String>, String) {
    match attr(topology.body(), "segments") {
        Some(Expression::Object(segments)) => {
            let mut keys = Vec::new();
            let mut node = String::new();
            for (k, v) in segments {
                let k = match k {
                    hcl::ObjectKey::Identifier(id) => id.as_str(),
                    hcl::ObjectKey::Expression(e) => expr_text(e).expect("a string key"),
                    other => panic!("segment key {other:?}"),
                };
                keys.push(k.to_string());
                node = expr_text(v).expect("a string value").to_string();
            }
            (keys, node)
        }
        other => panic!("topology.segments: {other:?}"),
    }
}

#[test]
fn nomad_volume_names_the_plugin_and_its_parameters() {
    let plugin_id = nomad_plugin_id();
    let vol = hcl_file("deploy/nomad/volume.hcl");
    assert_eq!(text(&vol, "type"), Some("csi"));
    assert_eq!(text(&vol, "plugin_id"), Some(plugin_id.as_str()));
    for key in ["id", "name"] {
        assert!(text(&vol, key).is_some_and(|v| !v.is_empty()), "no {key}");
    }
    let params = one_block(&vol, "parameters").body();
    for a in params.attributes() {
        assert!(PARAMETERS.contains(&a.key()), "parameter {:?}", a.key());
    }
    let fs = text(params, "fs").expect("parameters.fs");
    assert!(FILESYSTEMS.contains(&fs), "fs {fs:?}");
    let mount_fs = text(one_block(&vol, "mount_options").body(), "fs_type");
    assert_eq!(mount_fs, Some(fs), "mount_options.fs_type differs from fs");

    let capability = one_block(&vol, "capability").body();
    assert!(
        text(capability, "access_mode").is_some_and(|m| m.starts_with("single-node-")),
        "node-local volumes are single-node"
    );

    // Placement: the required nodes only, the preferred first; each a
    // topology.ballast/node segment, and (as CSI wants) every preferred
    // one among the required.
    let request = one_block(&vol, "topology_request").body();
    let nodes_of = |kind: &str| -> Vec<String> {
        blocks(request, kind)
            .flat_map(|b| blocks(b.body(), "topology"))
            .map(|t| {
                let (keys, node) = nomad_segment(t);
                assert_eq!(keys, [TOPOLOGY_KEY], "{kind} topology");
                assert!(!node.is_empty(), "{kind}: an empty node");
                node
            })
            .collect()
    };
    let required = nodes_of("required");
    let preferred = nodes_of("preferred");
    assert!(
        !required.is_empty(),
        "topology_request without required nodes"
    );
    for n in &preferred {
        assert!(required.contains(n), "preferred {n} is not required");
    }
}
