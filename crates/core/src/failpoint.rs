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
    "autogrow.decided",
    "fence.before_blocklist",
    "fence.after_blocklist",
    // A move, on its source (and the target's two).
    "move.connected",
    "move.target_prepared",
    "move.first_pass",
    "move.cut_over",
    "move.final_pass",
    "move.verified",
    "move.target_installed",
    "move.installed",
    "move.committed",
    "move.source_deleted",
    // A backup, on the volume's node, and a restore.
    "backup.running",
    "backup.snapshot_taken",
    "backup.uploading",
    "backup.manifest_written",
    "restore.after_data",
];

/// A test's code run when a failpoint is reached (to race an operation
/// deterministically), instead of dying there.
pub type Hook = std::sync::Arc<dyn Fn(&str) + Send + Sync>;

#[derive(Default, Clone)]
pub struct Failpoints {
    armed: HashSet<String>,
    hook: Option<(String, Hook)>,
}

impl std::fmt::Debug for Failpoints {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Failpoints")
            .field("armed", &self.armed)
            .field("hook", &self.hook.as_ref().map(|(n, _)| n))
            .finish()
    }
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
        Self { armed, hook: None }
    }

    /// Run `hook` each time `name` is reached (tests of races).
    pub fn with_hook(name: &str, hook: Hook) -> Self {
        Self {
            armed: HashSet::new(),
            hook: Some((name.to_string(), hook)),
        }
    }

    pub fn none() -> Self {
        Self::default()
    }

    /// Die here if `name` is armed.
    pub fn hit(&self, name: &str) {
        debug_assert!(ALL.contains(&name), "unknown failpoint {name}");
        if let Some((at, hook)) = &self.hook {
            if at == name {
                hook(name);
            }
        }
        if self.armed.contains(name) {
            tracing::error!(failpoint = name, "failpoint reached: killing the daemon");
            // Kill as `kill -9` would: no unwinding, no cleanup.
            let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL);
            // SIGKILL cannot be caught; this is never reached.
            std::process::abort();
        }
    }
}
