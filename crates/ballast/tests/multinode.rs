//! Several real daemons (`ballast serve`), each on a test host of its own (a
//! network namespace, see common/netns.rs), sharing a real 3-member etcd
//! whose members are on hosts of their own: what a small cluster of
//! machines is, with a network that can be cut. Nodes see each other and
//! each other's volumes; a node cut off is shown unreachable and comes back
//! when healed; losing one etcd member of three changes nothing.
//!
//! Needs root, loop devices, `ip`, `nsenter`, /usr/bin/etcd and the daemon
//! built with the `etcd` feature:
//! `cargo nextest run -p ballast --features etcd --test multinode`.

mod common;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use common::etcd::{require_etcd, EtcdCluster};
use common::netns::{require_netns, Net};
use common::{require_root_loop, volume_listing, Daemon, BIN};

const HOSTS: [&str; 3] = ["h1", "h2", "h3"];
const MEMBERS: [&str; 3] = ["e1", "e2", "e3"];
/// The daemons' node lease: short, so a cut-off node lapses quickly.
const NODE_TTL: &str = "2s";

/// Three ballast nodes and three etcd members, each on a host of one net.
/// Fields drop in order: the daemons, then etcd, then the net.
struct Cluster {
    nodes: Vec<Daemon>,
    etcd: EtcdCluster,
    net: Net,
}

impl Cluster {
    fn start() -> Cluster {
        let mut hosts: Vec<&str> = MEMBERS.to_vec();
        hosts.extend(HOSTS);
        let net = Net::new(&hosts);
        let etcd = EtcdCluster::start(&net, &MEMBERS);
        // One after the other: daemons started at once on a fresh store
        // race for the pool name "default" and the losers exit ("volume
        // \"pool:default\" has an operation in flight").
        let nodes = HOSTS.iter().map(|h| start_node(&net, &etcd, h)).collect();
        Cluster { nodes, etcd, net }
    }

    fn node(&self, host: &str) -> &Daemon {
        &self.nodes[HOSTS.iter().position(|h| *h == host).unwrap()]
    }

    fn node_mut(&mut self, host: &str) -> &mut Daemon {
        &mut self.nodes[HOSTS.iter().position(|h| *h == host).unwrap()]
    }

    /// Wait until every node in `on` shows exactly `want` in `node ls`.
    fn wait_nodes(&self, on: &[&str], want: &[(&str, &str)], why: &str) {
        let want: BTreeMap<String, String> = want
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        for h in on {
            let d = self.node(h);
            eventually(&format!("{why}: node ls on {h} shows {want:?}"), || {
                let seen = node_states(d);
                (seen == want).then_some(()).ok_or(seen)
            });
        }
    }

    /// Wait until every node in `on` lists volume `vol` on node `owner`.
    fn wait_listed(&self, on: &[&str], vol: &str, owner: &str) {
        for h in on {
            let d = self.node(h);
            eventually(&format!("{h} lists {vol} on {owner}"), || {
                let seen = volume_nodes(d);
                (seen.get(vol).map(String::as_str) == Some(owner))
                    .then_some(())
                    .ok_or(seen)
            });
        }
    }

    /// Create volume `vol` on `host`, in that node's own pool (named
    /// explicitly: without `--pool` the cluster may place it elsewhere).
    fn create_on(&self, host: &str, vol: &str) {
        let d = self.node(host);
        let pool = own_pool(d, host);
        d.ok(&["volume", "create", vol, "--size", "16M", "--pool", &pool]);
    }

    /// Stop everything and insist nothing of the net is left on the machine.
    fn finish(self) {
        for d in &self.nodes {
            d.assert_no_leftovers();
        }
        let check = self.net.cleanup_check();
        drop(self);
        let left = check.leftovers();
        assert!(left.is_empty(), "left behind: {left:?}");
    }
}

impl Drop for Cluster {
    /// On a failure, the end of every log (the fields then drop in order).
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        let tail = |text: String| {
            let lines: Vec<&str> = text.lines().collect();
            lines[lines.len().saturating_sub(30)..].join("\n")
        };
        for (h, d) in HOSTS.iter().zip(&self.nodes) {
            eprintln!("--- ballast {h} ---\n{}", tail(d.log()));
        }
        for i in 0..self.etcd.len() {
            eprintln!(
                "--- etcd {} ---\n{}",
                self.etcd.name(i),
                tail(self.etcd.log(i))
            );
        }
    }
}

fn start_node(net: &Net, etcd: &EtcdCluster, host: &str) -> Daemon {
    let listen = format!("{}:0", net.addr(host));
    Daemon::start_in_netns(
        &net.netns_path(host),
        &[
            "--store",
            &etcd.urls(),
            "--store-prefix",
            "/multinode/",
            "--node-id",
            host,
            "--watch-interval",
            "1h",
            "--node-ttl",
            NODE_TTL,
            "--listen",
            &listen,
        ],
        &[],
    )
}

/// id -> state ("ready", "unreachable") as `node ls` on `d` shows it.
fn node_states(d: &Daemon) -> BTreeMap<String, String> {
    d.json(&["node", "ls"])
        .as_array()
        .expect("a list")
        .iter()
        .map(|n| {
            (
                n["id"].as_str().unwrap().to_string(),
                n["state"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// The one pool `node ls` on `d` places on node `host`.
fn own_pool(d: &Daemon, host: &str) -> String {
    let nodes = d.json(&["node", "ls"]);
    let me = nodes
        .as_array()
        .expect("a list")
        .iter()
        .find(|n| n["id"] == host)
        .unwrap_or_else(|| panic!("{host} not in {nodes}"));
    match me["pools"].as_array().map(Vec::as_slice) {
        Some([p]) => p.as_str().unwrap().to_string(),
        _ => panic!("{host} should have one pool: {me}"),
    }
}

/// volume name -> node as `volume ls` on `d` shows it.
fn volume_nodes(d: &Daemon) -> BTreeMap<String, String> {
    volume_listing(d)
        .into_iter()
        .map(|(name, (node, _))| (name, node))
        .collect()
}

/// Poll `f` until it is Ok (up to 30 s); the failure names the last Err.
fn eventually<E: std::fmt::Debug>(what: &str, mut f: impl FnMut() -> Result<(), E>) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match f() {
            Ok(()) => return,
            Err(e) if Instant::now() > deadline => panic!("never happened: {what}; last: {e:?}"),
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

fn all_ready() -> Vec<(&'static str, &'static str)> {
    HOSTS.iter().map(|h| (*h, "ready")).collect()
}

/// A test's cluster with every node ready; None (a skip, or a failure
/// under CI=true) when the machine lacks a prerequisite.
fn ready_cluster(test: &str) -> Option<Cluster> {
    if !prerequisites(test) {
        return None;
    }
    let c = Cluster::start();
    c.wait_nodes(&HOSTS, &all_ready(), "start");
    Some(c)
}

fn prerequisites(test: &str) -> bool {
    require_netns(test) && require_root_loop(test) && require_etcd(test)
}

fn netns_inode_of_pid(pid: u32) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(format!("/proc/{pid}/ns/net"))
        .unwrap_or_else(|e| panic!("pid {pid}: {e}"))
        .ino()
}

fn netns_inode(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).unwrap().ino()
}

/// The harness alone: hosts reach each other, a partition cuts new and
/// established connections both ways and a heal restores them, and dropping
/// the net leaves nothing behind (nor does a net of a dead process).
#[test]
fn net_partitions_heals_and_cleans_up() {
    if !require_netns("net_partitions_heals_and_cleans_up") {
        return;
    }
    // A namespace as a test process that died (SIGKILL) would leave it.
    let mut dead = std::process::Command::new("true").spawn().unwrap();
    dead.wait().unwrap();
    let stale = format!("bl{}-0-stale", dead.id());
    let made = std::process::Command::new("ip")
        .args(["netns", "add", &stale])
        .status()
        .unwrap();
    assert!(made.success(), "ip netns add {stale}");

    let net = Net::new(&["a", "b", "c"]);
    let stale_left = Path::new("/run/netns").join(&stale).exists();
    if stale_left {
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", &stale])
            .status();
    }
    assert!(!stale_left, "Net::new left the stale {stale}");

    for h in ["a", "b", "c"] {
        let lo = net.exec(h, &["ip", "-o", "link", "show", "lo"]);
        assert!(lo.contains(",UP"), "{h}: lo is down: {lo}");
        let addrs = net.exec(h, &["ip", "-o", "-4", "addr", "show"]);
        assert!(
            addrs.contains(&format!("{}/24", net.addr(h))),
            "{h}: {addrs}"
        );
    }

    // A listener on a; b and c reach it, and each other.
    let a = net.addr("a");
    let listener: TcpListener = net.run_in("a", || TcpListener::bind((a, 0)).unwrap());
    let to_a = listener.local_addr().unwrap();
    let t = Duration::from_secs(1);
    assert!(net.reaches("b", to_a, t) && net.reaches("c", to_a, t));
    let to_c = SocketAddr::from((net.addr("c"), 9)); // refused: still an answer
    assert!(net.reaches("b", to_c, t));

    // An established connection b -> a (on a listener of its own: the
    // probes above wait unaccepted on the first one).
    let conn: TcpListener = net.run_in("a", || TcpListener::bind((a, 0)).unwrap());
    let to_conn = conn.local_addr().unwrap();
    let mut from_b: TcpStream =
        net.run_in("b", || TcpStream::connect_timeout(&to_conn, t).unwrap());
    let (mut at_a, peer) = conn.accept().unwrap();
    assert_eq!(peer.ip(), net.addr("b"));
    from_b.write_all(b"before").unwrap();
    at_a.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = [0u8; 6];
    at_a.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"before");

    net.partition("b");
    assert!(!net.reaches("b", to_a, t), "b still reaches a");
    assert!(!net.reaches("b", to_c, t), "b still reaches c");
    assert!(
        !net.reaches("a", SocketAddr::from((net.addr("b"), 9)), t),
        "a still reaches b"
    );
    assert!(net.reaches("c", to_a, t), "c lost a, which is not cut");
    from_b.write_all(b"during").unwrap();
    at_a.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
    let mut buf = [0u8; 6];
    assert!(
        at_a.read_exact(&mut buf).is_err(),
        "data crossed the partition: {buf:?}"
    );

    net.heal("b");
    eventually("b reaches a after the heal", || {
        net.reaches("b", to_a, t).then_some(()).ok_or("no")
    });
    // The established connection lived through it: TCP retransmits.
    at_a.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    at_a.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"during");

    assert_eq!(net.namespaces().len(), 4, "3 hosts and the bridge");
    let check = net.cleanup_check();
    // A process left in a namespace: the check sees it (and the names),
    // and the drop kills it.
    let mut sleeper = net.command("c", &["sleep", "600"]).spawn().unwrap();
    // nsenter joins the namespace after the spawn returns: wait for it.
    eventually("nsenter execs in c", || {
        let pids = net.host_pids("c");
        (pids == vec![sleeper.id()])
            .then_some(())
            .ok_or(format!("{pids:?}"))
    });
    let before = check.leftovers();
    assert_eq!(before.len(), 5, "4 namespaces and the sleeper: {before:?}");
    assert!(
        before
            .iter()
            .any(|l| l.contains(&format!("process {}", sleeper.id()))),
        "{before:?}"
    );
    drop((from_b, at_a, listener, conn));
    drop(net);
    let status = sleeper.wait().unwrap();
    assert!(!status.success(), "the drop killed it: {status}");
    let left = check.leftovers();
    assert!(left.is_empty(), "left behind: {left:?}");
}

/// Three nodes, each in its own namespace with its own node id: every node
/// shows all three ready, a volume made on one is listed by the others, and
/// a kill -9 and restart of one (in its namespace) changes none of that.
#[test]
fn three_nodes_see_each_other_and_each_others_volumes() {
    let Some(mut c) = ready_cluster("three_nodes_see_each_other_and_each_others_volumes") else {
        return;
    };

    for h in HOSTS {
        let d = c.node(h);
        // The daemon itself (nsenter exec'd it) in the host's namespace.
        let pid = d.pid().unwrap();
        let exe = std::fs::read_link(format!("/proc/{pid}/exe")).unwrap();
        assert_eq!(exe, Path::new(BIN).canonicalize().unwrap(), "{h}");
        assert_eq!(
            netns_inode_of_pid(pid),
            netns_inode(&c.net.netns_path(h)),
            "{h}: the daemon is not in its namespace"
        );
        // Its record, as another node sees it, has its own address.
        let other = c.node(if h == "h1" { "h2" } else { "h1" });
        let view = other.json(&["node", "ls"]);
        let me = view
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["id"] == h)
            .unwrap();
        let address = me["record"]["address"].as_str().unwrap_or_default();
        assert!(
            address.starts_with(&format!("{}:", c.net.addr(h))),
            "{h}'s record: {me}"
        );
    }

    c.create_on("h1", "from-h1");
    c.wait_listed(&HOSTS, "from-h1", "h1");

    // kill -9 of h2: the daemon dies (nothing is left in its namespace),
    // and it comes back in it.
    let h2ns = c.net.host("h2").ns.clone();
    c.node_mut("h2").kill9();
    let inside = c.net.host_pids("h2");
    assert!(inside.is_empty(), "left in {h2ns}: {inside:?}");
    c.node_mut("h2").restart();
    c.wait_nodes(&HOSTS, &all_ready(), "after h2's restart");
    c.create_on("h2", "from-h2");
    c.wait_listed(&HOSTS, "from-h1", "h1");
    c.wait_listed(&HOSTS, "from-h2", "h2");
    c.finish();
}

/// h3 cut off the net past its lease: h1 and h2 show it unreachable (and
/// keep working); healed, it is ready again everywhere and has caught up.
#[test]
fn a_partitioned_node_is_unreachable_and_ready_again_after_the_heal() {
    let Some(c) = ready_cluster("a_partitioned_node_is_unreachable_and_ready_again_after_the_heal")
    else {
        return;
    };
    c.create_on("h3", "on-h3");
    c.wait_listed(&HOSTS, "on-h3", "h3");

    c.net.partition("h3");
    let t = Duration::from_secs(1);
    for i in 0..c.etcd.len() {
        assert!(
            !c.net.reaches("h3", c.etcd.endpoint(i), t),
            "h3 still reaches etcd {}",
            c.etcd.name(i)
        );
    }
    c.wait_nodes(
        &["h1", "h2"],
        &[("h1", "ready"), ("h2", "ready"), ("h3", "unreachable")],
        "h3 cut off",
    );
    // The rest of the cluster works on, and still knows h3's volume.
    c.create_on("h1", "during-cut");
    c.wait_listed(&["h1", "h2"], "during-cut", "h1");
    c.wait_listed(&["h1", "h2"], "on-h3", "h3");
    eprintln!(
        "h3's own view while cut off: {:?}",
        node_states(c.node("h3"))
    );

    c.net.heal("h3");
    c.wait_nodes(&HOSTS, &all_ready(), "after the heal");
    c.wait_listed(&HOSTS, "during-cut", "h1");
    c.wait_listed(&HOSTS, "on-h3", "h3");
    c.create_on("h3", "after-heal");
    c.wait_listed(&HOSTS, "after-heal", "h3");
    c.finish();
}

/// The etcd leader killed: the two members left elect another, and every
/// node creates and lists volumes as before; the member restarted rejoins,
/// and everything still works. Each node creates several volumes in each
/// phase: a client that still sends some calls to the dead member fails
/// one of them with near certainty.
#[test]
fn losing_one_etcd_member_of_three_changes_nothing() {
    const ROUNDS: usize = 5;
    let Some(mut c) = ready_cluster("losing_one_etcd_member_of_three_changes_nothing") else {
        return;
    };

    let leader = c.etcd.leader().expect("an etcd leader");
    c.etcd.kill_member(leader);
    assert!(!c.etcd.is_running(leader));
    // The two left have a quorum and (once they elected a leader) answer.
    c.etcd.wait_healthy();
    let new_leader = c.etcd.leader();
    assert!(
        new_leader.is_some() && new_leader != Some(leader),
        "leader {leader} killed, now {new_leader:?}"
    );

    for phase in ["one-down", "all-up"] {
        if phase == "all-up" {
            c.etcd.restart_member(leader);
            assert!(c.etcd.member_healthy(leader));
        }
        for round in 0..ROUNDS {
            for h in HOSTS {
                c.create_on(h, &format!("{h}-{phase}-{round}"));
            }
        }
        for round in 0..ROUNDS {
            for h in HOSTS {
                c.wait_listed(&HOSTS, &format!("{h}-{phase}-{round}"), h);
            }
        }
        c.wait_nodes(&HOSTS, &all_ready(), phase);
    }
    c.finish();
}

/// The controller's node as `cluster status` on `d` names it.
fn controller_on(d: &Daemon) -> Option<String> {
    d.json(&["cluster", "status"])["controller"]["node"]
        .as_str()
        .map(str::to_string)
}

/// Run `per_thread` creates of 16M without a node on each of `threads`
/// threads per node in `from`; returns (name, ok, output) per create.
fn create_storm(
    c: &Cluster,
    from: &[&str],
    threads: usize,
    per_thread: usize,
    tag: &str,
    mid: impl FnOnce(),
) -> Vec<(String, bool, String)> {
    std::thread::scope(|s| {
        let mut handles = Vec::new();
        for h in from {
            for t in 0..threads {
                let d = c.node(h);
                let h = *h;
                handles.push(s.spawn(move || {
                    (0..per_thread)
                        .map(|i| {
                            let name = format!("{tag}-{h}-{t}-{i}");
                            let out = d.cli(&["volume", "create", &name, "--size", "16M"]);
                            let text = String::from_utf8_lossy(&out.stderr).to_string();
                            (name, out.status.success(), text)
                        })
                        .collect::<Vec<_>>()
                }));
            }
        }
        mid();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    })
}

/// Every node lists the same volumes, all settled, each node's images are
/// exactly its volumes, and its pool's accounting holds them.
fn assert_consistent(c: &Cluster) -> BTreeMap<String, (String, String)> {
    let first = c.node("h1");
    eventually("every node lists the same, settled volumes", || {
        let seen = volume_listing(first);
        let settled = seen
            .values()
            .all(|(_, state)| state == "available" || state == "mounted");
        let same = HOSTS.iter().all(|h| volume_listing(c.node(h)) == seen);
        (settled && same).then_some(()).ok_or(seen.len())
    });
    let seen = volume_listing(first);
    for h in HOSTS {
        let d = c.node(h);
        let mine: usize = seen.values().filter(|(n, _)| n == h).count();
        let pool_name = own_pool(d, h);
        let images = std::fs::read_dir(d.state.join("pools").join(&pool_name))
            .map(|rd| {
                rd.flatten()
                    .filter(|e| e.file_name().to_string_lossy().ends_with(".img"))
                    .count()
            })
            .unwrap_or(0);
        assert_eq!(images, mine, "{h}: images vs volumes placed there");
        let pool = d.json(&["pool", "inspect", &pool_name]);
        assert_eq!(
            pool["provisioned_bytes"].as_u64().unwrap(),
            mine as u64 * 16 * 1024 * 1024,
            "{h}: {pool}"
        );
        assert!(
            pool["provisioned_bytes"].as_u64() <= pool["capacity_bytes"].as_u64(),
            "{h}: {pool}"
        );
    }
    seen
}

/// Remove every volume from h1 (the other nodes' through their agents),
/// then nothing is left anywhere.
fn remove_all_and_finish(c: Cluster) {
    let names: Vec<String> = volume_listing(c.node("h1")).into_keys().collect();
    for n in &names {
        c.node("h1").ok(&["volume", "rm", n]);
    }
    eventually("every node lists nothing", || {
        HOSTS
            .iter()
            .all(|h| volume_listing(c.node(h)).is_empty())
            .then_some(())
            .ok_or(())
    });
    c.finish();
}

/// Issue 12's first acceptance line: 300 volumes created from the three
/// nodes at once, without naming a node: each placed once, on the node the
/// controller chose, within its pool, listed identically on every node.
#[test]
fn three_hundred_creates_from_three_nodes_are_placed_once_and_listed_alike() {
    let Some(c) =
        ready_cluster("three_hundred_creates_from_three_nodes_are_placed_once_and_listed_alike")
    else {
        return;
    };
    let results = create_storm(&c, &HOSTS, 4, 25, "v", || {});
    assert_eq!(results.len(), 300);
    let failed: Vec<_> = results.iter().filter(|r| !r.1).collect();
    assert!(failed.is_empty(), "creates failed: {failed:?}");
    let seen = assert_consistent(&c);
    assert_eq!(seen.len(), 300);
    let mut per_node = BTreeMap::new();
    for (node, _) in seen.values() {
        *per_node.entry(node.clone()).or_insert(0) += 1;
    }
    eprintln!("placed per node: {per_node:?}");
    // The most room first, and room shrinks with each placement: all three
    // nodes take some.
    assert_eq!(per_node.len(), 3, "{per_node:?}");
    remove_all_and_finish(c);
}

/// The controller's daemon killed -9 in the middle of creates from the
/// other two nodes: another node takes over; every create that was asked
/// for ends created (once) or refused; nothing is left half-made.
#[test]
fn a_controller_killed_during_creates_loses_none_and_does_none_twice() {
    let Some(mut c) =
        ready_cluster("a_controller_killed_during_creates_loses_none_and_does_none_twice")
    else {
        return;
    };
    let first = controller_on(c.node("h1")).expect("a controller");
    let askers: Vec<&str> = HOSTS.iter().copied().filter(|h| *h != first).collect();
    let killed_at = std::sync::Mutex::new(None);
    let pid = c.node(&first).pid().expect("the controller runs");
    let results = create_storm(&c, &askers, 2, 20, "k", || {
        // Some creates are through; kill the controller in the middle.
        eventually("creates under way", || {
            (volume_nodes(c.node(askers[0])).len() >= 10)
                .then_some(())
                .ok_or(())
        });
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGKILL,
        )
        .unwrap();
        *killed_at.lock().unwrap() = Some(Instant::now());
    });
    let killed_at = killed_at.into_inner().unwrap().unwrap();
    // A new controller among the survivors (the figure is measured by the
    // failover bench; here it must only happen).
    eventually("a new controller", || {
        match controller_on(c.node(askers[0])) {
            Some(n) if n != first => Ok(()),
            other => Err(other),
        }
    });
    eprintln!(
        "new controller {:?} named {:?} after the kill",
        controller_on(c.node(askers[0])),
        killed_at.elapsed()
    );
    // The dead node returns; what was placed on it converges there.
    c.node_mut(&first).kill9();
    c.node_mut(&first).restart();
    c.wait_nodes(&HOSTS, &all_ready(), "after the restart");
    let seen = assert_consistent(&c);
    for (name, ok, err) in &results {
        if *ok {
            assert!(seen.contains_key(name), "{name} was created but is gone");
        } else {
            // A refused create either never happened or goes on: never
            // half, and its error says which.
            eprintln!("{name}: {err}");
            assert!(
                err.contains("retry") || err.contains("goes on") || err.contains("unavailable"),
                "{name}: unclear error {err}"
            );
        }
    }
    // None twice: each name at most once (a map), each volume with one
    // image (assert_consistent), and no want left over.
    assert!(seen.len() <= results.len());
    remove_all_and_finish(c);
}

/// A node cut off for 20 s: the others show it unreachable and place new
/// volumes elsewhere; its mounted volume keeps working locally; a delete of
/// one of its volumes asked meanwhile waits; after the heal it converges.
#[test]
fn a_node_partitioned_for_twenty_seconds_keeps_working_locally_and_converges() {
    let Some(c) =
        ready_cluster("a_node_partitioned_for_twenty_seconds_keeps_working_locally_and_converges")
    else {
        return;
    };
    let h3 = c.node("h3");
    h3.ok(&["volume", "create", "busy", "--size", "16M", "--node", "h3"]);
    h3.ok(&[
        "volume", "create", "doomed", "--size", "16M", "--node", "h3",
    ]);
    let mp = std::path::PathBuf::from(h3.ok(&["volume", "mount", "busy", "--id", "app"]).trim());
    c.wait_listed(&HOSTS, "doomed", "h3");

    c.net.partition("h3");
    let cut = Instant::now();
    c.wait_nodes(
        &["h1", "h2"],
        &[("h1", "ready"), ("h2", "ready"), ("h3", "unreachable")],
        "h3 cut off",
    );
    // New placements avoid it.
    for i in 0..6 {
        let v = c.node("h1").json(&[
            "volume",
            "create",
            &format!("while-cut-{i}"),
            "--size",
            "16M",
        ]);
        assert_ne!(v["node"], "h3", "{v}");
    }
    // Naming it is refused, clearly.
    let err = c.node("h2").fails(&[
        "volume", "create", "on-cut", "--size", "16M", "--node", "h3",
    ]);
    assert!(err.contains("unreachable"), "{err}");
    // A delete of its volume is recorded and waits for it.
    let err = c.node("h1").fails(&["volume", "rm", "doomed"]);
    assert!(err.contains("when it returns"), "{err}");
    // Its mounted volume works locally all along.
    let mut n = 0;
    while cut.elapsed() < Duration::from_secs(20) {
        let path = mp.join(format!("w{n}"));
        std::fs::write(&path, format!("{n}")).unwrap();
        std::fs::File::open(&path).unwrap().sync_all().unwrap();
        n += 1;
        std::thread::sleep(Duration::from_millis(200));
    }
    c.net.heal("h3");
    c.wait_nodes(&HOSTS, &all_ready(), "after the heal");
    // It converges: the delete happened, the cut-time volumes are known.
    for h in HOSTS {
        let d = c.node(h);
        eventually(&format!("{h} sees doomed gone"), || {
            (!volume_nodes(d).contains_key("doomed"))
                .then_some(())
                .ok_or(())
        });
    }
    c.wait_listed(
        &HOSTS,
        "while-cut-0",
        &volume_nodes(c.node("h1"))["while-cut-0"],
    );
    for i in 0..n {
        assert_eq!(
            std::fs::read_to_string(mp.join(format!("w{i}"))).unwrap(),
            i.to_string()
        );
    }
    c.node("h3")
        .ok(&["volume", "unmount", "busy", "--id", "app"]);
    assert_consistent(&c);
    remove_all_and_finish(c);
}

/// Claims acquired from the three nodes in one group: ordinals 1..N, each
/// exactly once, and every node lists them alike.
#[test]
fn claims_from_three_nodes_get_each_ordinal_exactly_once() {
    let Some(c) = ready_cluster("claims_from_three_nodes_get_each_ordinal_exactly_once") else {
        return;
    };
    let per_thread = 3;
    let mut ordinals: Vec<u64> = std::thread::scope(|s| {
        let handles: Vec<_> = HOSTS
            .iter()
            .flat_map(|h| (0..2).map(move |t| (*h, t)))
            .map(|(h, t)| {
                let d = c.node(h);
                s.spawn(move || {
                    (0..per_thread)
                        .map(|_| {
                            let holder = format!("{h}-{t}");
                            let claim = d.json(&[
                                "claim",
                                "acquire",
                                "es",
                                "--volumes",
                                "data",
                                "--size",
                                "16M",
                                "--holder",
                                &holder,
                            ]);
                            claim["ordinal"]
                                .as_u64()
                                .unwrap_or_else(|| panic!("{claim}"))
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    });
    ordinals.sort_unstable();
    let want: Vec<u64> = (1..=(HOSTS.len() * 2 * per_thread) as u64).collect();
    assert_eq!(ordinals, want, "each ordinal exactly once, lowest first");
    let listed = |d: &Daemon| d.json(&["claim", "ls", "es"]).as_array().unwrap().len();
    for h in HOSTS {
        eventually(&format!("{h} lists every claim"), || {
            (listed(c.node(h)) == want.len()).then_some(()).ok_or(())
        });
    }
    // Released from one node, whichever acquired them.
    {
        let d = c.node("h1");
        for claim in d.json(&["claim", "ls", "es"]).as_array().unwrap() {
            let claim = if claim.get("claim").is_some() {
                &claim["claim"]
            } else {
                claim
            };
            let holder = claim["holder"].as_str().unwrap().to_string();
            let ordinal = claim["ordinal"].as_u64().unwrap();
            d.ok(&[
                "claim",
                "release",
                "es",
                &ordinal.to_string(),
                "--holder",
                &holder,
            ]);
        }
    }
    remove_all_and_finish(c);
}

/// Quorum lost (two of three members down): writes fail within the store's
/// deadline as unavailable, reads are served from the cache, and when the
/// members return everything works again without a restart.
#[test]
fn quorum_loss_refuses_writes_serves_reads_and_recovers() {
    let Some(mut c) = ready_cluster("quorum_loss_refuses_writes_serves_reads_and_recovers") else {
        return;
    };
    c.node("h1").ok(&[
        "volume", "create", "before", "--size", "16M", "--node", "h1",
    ]);
    c.wait_listed(&HOSTS, "before", "h1");
    c.etcd.kill_member(0);
    c.etcd.kill_member(1);
    for h in HOSTS {
        let d = c.node(h);
        let err = d.fails(&[
            "volume",
            "create",
            &format!("during-{h}"),
            "--size",
            "16M",
            "--node",
            h,
        ]);
        assert!(
            err.contains("did not answer") || err.contains("unavailable") || err.contains("retry"),
            "{h}: {err}"
        );
        // Reads from the cache.
        assert!(volume_nodes(d).contains_key("before"), "{h}");
    }
    c.etcd.restart_member(0);
    c.etcd.restart_member(1);
    c.etcd.wait_healthy();
    for h in HOSTS {
        let d = c.node(h);
        eventually(&format!("{h} writes again"), || {
            let out = d.cli(&[
                "volume",
                "create",
                &format!("after-{h}"),
                "--size",
                "16M",
                "--node",
                h,
            ]);
            out.status
                .success()
                .then_some(())
                .ok_or(String::from_utf8_lossy(&out.stderr).to_string())
        });
    }
    for h in HOSTS {
        c.wait_listed(&HOSTS, &format!("after-{h}"), h);
    }
    c.wait_nodes(&HOSTS, &all_ready(), "recovered");
    let seen = assert_consistent(&c);
    // A create that timed out may have landed; none is half-made.
    eprintln!(
        "after the quorum loss: {:?}",
        seen.keys().collect::<Vec<_>>()
    );
    remove_all_and_finish(c);
}

/// A second daemon with a node id another live daemon holds refuses to
/// start, naming why; the node it would have shadowed is untouched.
#[test]
fn a_second_daemon_with_a_live_node_id_refuses_to_start() {
    let Some(c) = ready_cluster("a_second_daemon_with_a_live_node_id_refuses_to_start") else {
        return;
    };
    let scratch = tempfile::Builder::new()
        .prefix("ballast-test-")
        .tempdir_in("/var/tmp")
        .unwrap();
    let out = c
        .net
        .command(
            "h2",
            &[
                BIN,
                "serve",
                "--state-dir",
                scratch.path().join("state").to_str().unwrap(),
                "--run-dir",
                scratch.path().join("run").to_str().unwrap(),
                "--store",
                &c.etcd.urls(),
                "--store-prefix",
                "/multinode/",
                "--node-id",
                "h1",
                "--node-ttl",
                NODE_TTL,
                "--no-docker",
                "--listen",
                &format!("{}:0", c.net.addr("h2")),
            ],
        )
        .output()
        .expect("run a second daemon");
    let text =
        String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "a second h1 started:\n{text}");
    assert!(text.contains("live daemon holds this node id"), "{text}");
    c.wait_nodes(&HOSTS, &all_ready(), "h1 untouched");
    assert!(controller_on(c.node("h3")).is_some());
    c.finish();
}

/// CSI as a cluster driver, through h1's socket only: CreateVolume goes to
/// the preferred topology's node (h2), or is RESOURCE_EXHAUSTED for a
/// topology no node serves; GetCapacity answers per node; ListVolumes lists
/// every node's volumes with their topology; DeleteVolume of h2's volume
/// from h1 removes it on h2.
#[test]
fn csi_on_any_node_places_by_topology_and_answers_for_the_cluster() {
    use ballast_csi_proto::v1 as csi;
    use csi::controller_client::ControllerClient;
    use csi::volume_capability::access_mode::Mode;
    use csi::volume_capability::{AccessMode, AccessType, MountVolume};
    let Some(c) = ready_cluster("csi_on_any_node_places_by_topology_and_answers_for_the_cluster")
    else {
        return;
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let socket = c.node("h1").run.join("csi.sock");
    let topo = |node: &str| csi::Topology {
        segments: [("topology.ballast/node".to_string(), node.to_string())].into(),
    };
    let cap = csi::VolumeCapability {
        access_mode: Some(AccessMode {
            mode: Mode::SingleNodeWriter as i32,
        }),
        access_type: Some(AccessType::Mount(MountVolume {
            fs_type: "ext4".into(),
            ..Default::default()
        })),
    };
    let create = |name: &str, requisite: Vec<csi::Topology>, preferred: Vec<csi::Topology>| {
        csi::CreateVolumeRequest {
            name: name.into(),
            capacity_range: Some(csi::CapacityRange {
                required_bytes: 64 << 20,
                limit_bytes: 0,
            }),
            volume_capabilities: vec![cap.clone()],
            accessibility_requirements: Some(csi::TopologyRequirement {
                requisite,
                preferred,
            }),
            ..Default::default()
        }
    };
    rt.block_on(async {
        let mut ctl = ControllerClient::new(common::csi_channel(&socket).await);
        // WaitForFirstConsumer: all nodes requisite, the pod's node first.
        let all: Vec<_> = HOSTS.iter().map(|h| topo(h)).collect();
        let v = ctl
            .create_volume(create("pvc-1", all.clone(), vec![topo("h2"), topo("h1")]))
            .await
            .unwrap()
            .into_inner()
            .volume
            .unwrap();
        assert_eq!(v.accessible_topology, vec![topo("h2")]);
        let err = ctl
            .create_volume(create("pvc-2", vec![topo("nowhere")], vec![]))
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::ResourceExhausted, "{err}");
        // Capacity per segment: each node's own figure; none for a node
        // that does not exist.
        let capacity = |node: &str| {
            let mut ctl = ctl.clone();
            let t = topo(node);
            async move {
                ctl.get_capacity(csi::GetCapacityRequest {
                    volume_capabilities: vec![],
                    parameters: Default::default(),
                    accessible_topology: Some(t),
                })
                .await
                .unwrap()
                .into_inner()
                .available_capacity
            }
        };
        assert!(capacity("h3").await > 0);
        assert_eq!(capacity("nowhere").await, 0);
        // Every node's volumes, with their topology.
        c.node("h3")
            .ok(&["volume", "create", "on-h3", "--size", "16M", "--node", "h3"]);
        let listed = loop {
            let entries = ctl
                .list_volumes(csi::ListVolumesRequest::default())
                .await
                .unwrap()
                .into_inner()
                .entries;
            if entries.len() == 2 {
                break entries;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let topos: BTreeMap<String, Vec<csi::Topology>> = listed
            .into_iter()
            .map(|e| {
                let v = e.volume.unwrap();
                let name = v.volume_context.get("name").cloned().unwrap_or_default();
                (name, v.accessible_topology)
            })
            .collect();
        assert_eq!(topos.get("pvc-1"), Some(&vec![topo("h2")]), "{topos:?}");
        assert_eq!(topos.get("on-h3"), Some(&vec![topo("h3")]), "{topos:?}");
        // Delete from h1 of the volume on h2.
        ctl.delete_volume(csi::DeleteVolumeRequest {
            volume_id: v.volume_id.clone(),
            secrets: Default::default(),
        })
        .await
        .unwrap();
    });
    for h in HOSTS {
        let d = c.node(h);
        eventually(&format!("{h} sees pvc-1 gone"), || {
            (!volume_nodes(d).contains_key("pvc-1"))
                .then_some(())
                .ok_or(())
        });
    }
    remove_all_and_finish(c);
}
