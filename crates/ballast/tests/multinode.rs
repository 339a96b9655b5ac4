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
use common::{require_root_loop, Daemon, BIN};

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
    d.json(&["volume", "ls"])
        .as_array()
        .expect("a list")
        .iter()
        .map(|v| {
            (
                v["name"].as_str().unwrap().to_string(),
                v["node"].as_str().unwrap_or("-").to_string(),
            )
        })
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
    assert_eq!(net.host_pids("c"), vec![sleeper.id()], "nsenter execs");
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
    if !prerequisites("three_nodes_see_each_other_and_each_others_volumes") {
        return;
    }
    let mut c = Cluster::start();
    c.wait_nodes(&HOSTS, &all_ready(), "start");

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
    if !prerequisites("a_partitioned_node_is_unreachable_and_ready_again_after_the_heal") {
        return;
    }
    let c = Cluster::start();
    c.wait_nodes(&HOSTS, &all_ready(), "start");
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
    if !prerequisites("losing_one_etcd_member_of_three_changes_nothing") {
        return;
    }
    const ROUNDS: usize = 5;
    let mut c = Cluster::start();
    c.wait_nodes(&HOSTS, &all_ready(), "start");

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
