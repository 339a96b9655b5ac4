//! Finding and stopping the FUSE helper processes (rbd-fuse) that serve a
//! mountpoint. They run outside the daemon, so after a restart the only
//! record of which process serves what is their command line.

use std::path::Path;

/// Whether `argv` is a FUSE helper's (`*fuse`) serving `mountpoint`.
fn serves(argv: &[&[u8]], mountpoint: &[u8]) -> bool {
    let Some(prog) = argv.first() else {
        return false;
    };
    let base = prog.rsplit(|&b| b == b'/').next().unwrap_or(prog);
    base.ends_with(b"fuse") && argv[1..].contains(&mountpoint)
}

/// The pids of the helpers serving `mountpoint`.
pub(crate) fn helper_pids(mountpoint: &Path) -> Vec<u32> {
    let want = mountpoint.as_os_str().as_encoded_bytes();
    let me = std::process::id();
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for e in rd.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        if pid == me {
            continue;
        }
        let Ok(cmdline) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let argv: Vec<&[u8]> = cmdline
            .split(|&b| b == 0)
            .filter(|a| !a.is_empty())
            .collect();
        if serves(&argv, want) {
            out.push(pid);
        }
    }
    out
}

/// SIGKILL every helper serving `mountpoint`: nothing it holds is flushed.
pub(crate) fn kill_helpers(mountpoint: &Path) {
    for pid in helper_pids(mountpoint) {
        let Ok(pid) = i32::try_from(pid) else {
            continue;
        };
        let pid = nix::unistd::Pid::from_raw(pid);
        if nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL).is_ok() {
            tracing::warn!(%pid, mountpoint = %mountpoint.display(), "killed the FUSE helper");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_fuse_helpers_with_the_mountpoint_as_an_argument_match() {
        let mp = b"/var/lib/ballast/maps/v1".as_slice();
        let rbd: Vec<&[u8]> = vec![b"/usr/bin/rbd-fuse", b"-p", b"rbd", mp];
        assert!(serves(&rbd, mp));
        let other: Vec<&[u8]> = vec![b"umount", mp];
        assert!(!serves(&other, mp));
        let prefix: Vec<&[u8]> = vec![b"rbd-fuse", b"/var/lib/ballast/maps/v10"];
        assert!(!serves(&prefix, mp));
    }
}
