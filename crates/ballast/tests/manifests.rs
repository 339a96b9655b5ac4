//! The orchestrator manifests (deploy/kubernetes/*.yaml, deploy/nomad/*.hcl)
//! agree with the plugin and with each other: the driver name and topology
//! key are the ones ballast-server exports, every sidecar names the socket
//! the plugin serves, the node plugin has the privileges and mounts it
//! needs, and every service account a pod runs as exists. Parsing only: no
//! cluster is involved.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use ballast_server::csi::{DRIVER_NAME, TOPOLOGY_KEY};
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

fn container<'a>(pod: &'a Yaml, name: &str) -> &'a Yaml {
    containers(pod)
        .find(|c| c["name"].as_str() == Some(name))
        .unwrap_or_else(|| panic!("no container {name:?}"))
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

    let ballast = container(pod, "ballast");
    assert_eq!(
        ballast["securityContext"]["privileged"].as_bool(),
        Some(true)
    );
    let argv = command_line(ballast);
    assert!(argv.contains(&"serve"), "{argv:?}");
    assert!(has_flag(&argv, "no-docker"), "{argv:?}");
    assert_eq!(flag(&argv, "node-id"), Some("$(NODE_NAME)"));
    assert_eq!(env(ballast, "NODE_NAME"), Some("spec.nodeName"));
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
    // Volumes are mounted under the run dir and bound to staging paths: the
    // mounts must live on the host to outlive the container.
    assert!(
        m.contains(&("/run/ballast", "/run/ballast", "Bidirectional")),
        "{m:?}"
    );

    let registrar = sidecar(pod, "csi-node-driver-registrar").expect("node-driver-registrar");
    let argv = command_line(registrar);
    let address = flag(&argv, "csi-address").expect("--csi-address");
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

    let provisioner = sidecar(pod, "csi-provisioner").expect("node provisioner");
    let argv = command_line(provisioner);
    assert_eq!(flag(&argv, "node-deployment"), Some("true"), "{argv:?}");
    assert_eq!(env(provisioner, "NODE_NAME"), Some("spec.nodeName"));
    assert!(has_topology(&argv), "{argv:?}");
    assert!(has_flag(&argv, "enable-capacity"), "{argv:?}");
    assert!(has_flag(&argv, "capacity-ownerref-level"), "{argv:?}");
    assert!(
        !has_flag(&argv, "leader-election"),
        "one provisioner per node: {argv:?}"
    );
    for var in ["NAMESPACE", "POD_NAME"] {
        assert!(env(provisioner, var).is_some(), "capacity needs {var}");
    }

    let snapshotter = sidecar(pod, "csi-snapshotter").expect("node snapshotter");
    let argv = command_line(snapshotter);
    assert_eq!(flag(&argv, "node-deployment"), Some("true"), "{argv:?}");
    assert_eq!(env(snapshotter, "NODE_NAME"), Some("spec.nodeName"));
    assert!(
        !has_flag(&argv, "leader-election"),
        "one snapshotter per node: {argv:?}"
    );

    assert!(sidecar(pod, "livenessprobe").is_some(), "no livenessprobe");
    assert!(
        ballast["livenessProbe"]["httpGet"]["path"].as_str() == Some("/healthz"),
        "ballast has no liveness probe"
    );
}

fn has_topology(argv: &[&str]) -> bool {
    flag(argv, "feature-gates").is_some_and(|g| g.split(',').any(|kv| kv.trim() == "Topology=true"))
}

#[test]
fn controller_deployment_has_the_standard_sidecars() {
    let docs = k8s_docs();
    let deployment = only(&docs, "Deployment");
    let pod = &deployment.yaml["spec"]["template"]["spec"];
    let provisioner = sidecar(pod, "csi-provisioner").expect("external-provisioner");
    assert!(has_topology(&command_line(provisioner)), "Topology=true");
    for image in ["csi-provisioner", "csi-resizer", "csi-snapshotter"] {
        let c = sidecar(pod, image).unwrap_or_else(|| panic!("no {image}"));
        assert!(
            has_flag(&command_line(c), "leader-election"),
            "{image} without leader election"
        );
    }
    assert!(sidecar(pod, "livenessprobe").is_some(), "no livenessprobe");
    // Two ballast daemons must not share a node's state directory.
    assert!(
        containers(pod).all(|c| !command_line(c).contains(&"serve")),
        "the controller runs no ballast of its own"
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
fn every_socket_argument_names_the_same_socket() {
    let docs = k8s_docs();
    let mut container_paths: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for (d, pod) in pod_specs(&docs) {
        for c in containers(pod) {
            let Some(path) = socket(c) else { continue };
            let who = format!("{} {}", d.what(), c["name"].as_str().unwrap_or("?"));
            // Every socket is the plugin's, in the kubelet's plugin dir.
            let host = on_host(pod, c, path)
                .unwrap_or_else(|| panic!("{who}: {path} is on no hostPath mount"));
            assert_eq!(host, format!("{}/csi.sock", plugin_dir()), "{who}");
            container_paths.entry(path).or_default().push(who);
        }
    }
    assert_eq!(
        container_paths.len(),
        1,
        "containers disagree on the socket path: {container_paths:?}"
    );
    let users = container_paths.values().next().expect("one path");
    for sidecar in [
        "csi-provisioner",
        "node-driver-registrar",
        "livenessprobe",
        "ballast",
    ] {
        assert!(
            users.iter().any(|u| u.ends_with(sidecar)),
            "{sidecar} names no socket: {users:?}"
        );
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

/// The one task of the Nomad job that has a `csi_plugin` block.
fn nomad_plugin_task(job: &Block) -> &Block {
    let tasks: Vec<&Block> = blocks(job.body(), "group")
        .flat_map(|g| blocks(g.body(), "task"))
        .filter(|t| blocks(t.body(), "csi_plugin").next().is_some())
        .collect();
    match tasks.as_slice() {
        [one] => one,
        other => panic!(
            "want one task with a csi_plugin block, found {}",
            other.len()
        ),
    }
}

fn nomad_job() -> Body {
    hcl_file("deploy/nomad/ballast-csi.nomad.hcl")
}

#[test]
fn nomad_job_is_a_system_job_with_a_csi_plugin() {
    let body = nomad_job();
    let job = one_block(&body, "job");
    assert!(!job.labels().is_empty(), "job without a name");
    assert_eq!(
        text(job.body(), "type"),
        Some("system"),
        "a plugin on every client"
    );

    let task = nomad_plugin_task(job);
    let plugin = one_block(task.body(), "csi_plugin").body();
    let id = text(plugin, "id").expect("csi_plugin id");
    assert!(!id.is_empty());
    assert_eq!(text(plugin, "type"), Some("monolith"));
    let mount_dir = text(plugin, "mount_dir").expect("csi_plugin mount_dir");

    let config = one_block(task.body(), "config").body();
    assert_eq!(attr(config, "privileged"), Some(&Expression::Bool(true)));
    let argv: Vec<&str> = match attr(config, "args") {
        Some(Expression::Array(items)) => items.iter().filter_map(expr_text).collect(),
        other => panic!("config.args: {other:?}"),
    };
    assert!(argv.contains(&"serve"), "{argv:?}");
    assert!(has_flag(&argv, "no-docker"), "{argv:?}");
    assert_eq!(flag(&argv, "node-id"), Some("${node.unique.name}"));
    let endpoint = flag(&argv, "csi-endpoint").expect("--csi-endpoint");
    let sock = endpoint
        .strip_prefix("unix://")
        .expect("a unix:// endpoint");
    assert_eq!(
        Path::new(sock).parent(),
        Some(Path::new(mount_dir)),
        "the socket is not in mount_dir"
    );
}

#[test]
fn nomad_volume_names_the_plugin_and_its_parameters() {
    let job = nomad_job();
    let task = nomad_plugin_task(one_block(&job, "job"));
    let plugin_id = text(one_block(task.body(), "csi_plugin").body(), "id").expect("id");

    let vol = hcl_file("deploy/nomad/volume.hcl");
    assert_eq!(text(&vol, "type"), Some("csi"));
    assert_eq!(text(&vol, "plugin_id"), Some(plugin_id));
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

    let topology = one_block(
        one_block(one_block(&vol, "topology_request").body(), "required").body(),
        "topology",
    )
    .body();
    let keys: Vec<&str> = match attr(topology, "segments") {
        Some(Expression::Object(segments)) => segments
            .iter()
            .map(|(k, _)| match k {
                hcl::ObjectKey::Identifier(id) => id.as_str(),
                hcl::ObjectKey::Expression(e) => expr_text(e).expect("a string key"),
                other => panic!("segment key {other:?}"),
            })
            .collect(),
        other => panic!("topology.segments: {other:?}"),
    };
    assert_eq!(keys, [TOPOLOGY_KEY]);
}
