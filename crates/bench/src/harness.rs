//! The tests' Ceph harness (a throwaway cluster, and its RADOS Gateway),
//! shared with the benches rather than copied.

#[allow(dead_code)]
#[path = "../../ballast/tests/common/netns.rs"]
pub mod netns;

#[allow(dead_code)]
#[path = "../../ballast/tests/common/ceph.rs"]
pub mod ceph;

/// What `netns.rs` asks of the test helpers: whether `tool` is installed.
#[allow(dead_code)]
fn require_tool(_test: &str, tool: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
}
