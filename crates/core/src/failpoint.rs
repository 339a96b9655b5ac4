//! Failpoints: named steps at which tests make the daemon die as if killed.
//!
//! `BALLAST_FAILPOINTS=stage.after_attach,...` names steps; reaching one
//! sends SIGKILL to this process, so nothing after it runs (no destructors, no
//! cleanup), exactly as with `kill -9`. The list of every step is [`ALL`], so
//! a test can walk them.

use std::collections::HashSet;

/// Every failpoint, in the order an operation reaches them.
pub const ALL: &[&str] = &[
    "create.after_intent",
    "create.after_image",
    "stage.after_intent",
    "stage.after_attach",
    "stage.after_format",
    "stage.after_mount",
    "unstage.after_intent",
    "unstage.after_umount",
    "unstage.after_detach",
    "resize.after_intent",
    "resize.after_image",
    "resize.after_fsgrow",
    "delete.after_intent",
    "delete.after_unstage",
    "delete.after_image",
    "snapshot.after_freeze",
    "snapshot.after_copy",
    "poolcreate.after_intent",
    "poolcreate.after_mkfs",
    "pooladd.after_intent",
    "pooladd.after_file",
    "pooladd.after_device_add",
    "claim.after_record",
    "claim.after_volumes",
];

#[derive(Debug, Default, Clone)]
pub struct Failpoints {
    armed: HashSet<String>,
}

impl Failpoints {
    pub fn from_env() -> Self {
        let armed = std::env::var("BALLAST_FAILPOINTS")
            .unwrap_or_default()
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(String::from)
            .collect();
        Self { armed }
    }

    pub fn none() -> Self {
        Self::default()
    }

    /// Die here if `name` is armed.
    pub fn hit(&self, name: &str) {
        debug_assert!(ALL.contains(&name), "unknown failpoint {name}");
        if self.armed.contains(name) {
            tracing::error!(failpoint = name, "failpoint reached: killing the daemon");
            // Kill as `kill -9` would: no unwinding, no cleanup.
            let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL);
            // SIGKILL cannot be caught; this is never reached.
            std::process::abort();
        }
    }
}
