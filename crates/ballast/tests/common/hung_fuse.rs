//! A FUSE filesystem that stops answering, and the mount table as the
//! tests read it.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The source of the mount visible at `target` in our mount namespace.
pub fn mount_source(target: &Path) -> Option<String> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    text.lines()
        .rev()
        .filter_map(|l| {
            let fields: Vec<&str> = l.split(' ').collect();
            let sep = fields.iter().position(|f| *f == "-")?;
            Some((
                PathBuf::from(fields.get(4)?),
                fields.get(sep + 2)?.to_string(),
            ))
        })
        .find(|(t, _)| t == target)
        .map(|(_, source)| source)
}

/// A FUSE filesystem (Debian's fuse-overlayfs, in the foreground) whose
/// server the test stops with SIGSTOP, so every call that reaches it waits
/// in the kernel, as on a host where another program's FUSE server hung.
/// It holds a loop device of its own, a foreign one to ballast.
pub struct HungFuse {
    server: Child,
    pub mnt: PathBuf,
    pub foreign_loop: String,
    stopped: bool,
}

impl HungFuse {
    pub fn start(dir: &Path) -> HungFuse {
        for d in ["lower", "upper", "work", "mnt"] {
            std::fs::create_dir_all(dir.join(d)).unwrap();
        }
        let mnt = dir.join("mnt");
        let server = Command::new("fuse-overlayfs")
            .arg("-f")
            .arg("-o")
            // timeout=0: the kernel caches no attributes or entries, so
            // every lookup and stat of its files reaches the server.
            .arg(format!(
                "timeout=0,lowerdir={},upperdir={},workdir={}",
                dir.join("lower").display(),
                dir.join("upper").display(),
                dir.join("work").display()
            ))
            .arg(&mnt)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start fuse-overlayfs");
        let deadline = Instant::now() + Duration::from_secs(10);
        while mount_source(&mnt).is_none() {
            assert!(Instant::now() < deadline, "fuse-overlayfs did not mount");
            std::thread::sleep(Duration::from_millis(20));
        }
        let image = mnt.join("foreign.img");
        std::fs::File::create(&image)
            .and_then(|f| f.set_len(64 << 20))
            .unwrap();
        let out = Command::new("losetup")
            .args(["-f", "--show"])
            .arg(&image)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "losetup: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let foreign_loop = String::from_utf8(out.stdout).unwrap().trim().to_string();
        HungFuse {
            server,
            mnt,
            foreign_loop,
            stopped: false,
        }
    }

    /// Stop answering, and prove it: a stat of a file in it must not come
    /// back (else the tests below would prove nothing).
    pub fn hang(&mut self) {
        self.signal(nix::sys::signal::Signal::SIGSTOP);
        self.stopped = true;
        let probe = self.mnt.join("foreign.img");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(std::fs::metadata(probe).map(|m| m.len()));
        });
        if let Ok(answer) = rx.recv_timeout(Duration::from_secs(2)) {
            let state = std::fs::read_to_string(format!("/proc/{}/status", self.server.id()))
                .unwrap_or_default();
            panic!("the stopped FUSE server still answered ({answer:?}): the hang is not real\n{state}");
        }
    }

    fn signal(&self, sig: nix::sys::signal::Signal) {
        let pid = nix::unistd::Pid::from_raw(self.server.id() as i32);
        nix::sys::signal::kill(pid, sig).unwrap();
    }
}

impl Drop for HungFuse {
    fn drop(&mut self) {
        if self.stopped {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(self.server.id() as i32),
                nix::sys::signal::Signal::SIGCONT,
            );
        }
        let _ = Command::new("losetup")
            .arg("-d")
            .arg(&self.foreign_loop)
            .status();
        let _ = nix::mount::umount2(&self.mnt, nix::mount::MntFlags::MNT_DETACH);
        let _ = self.server.kill();
        let _ = self.server.wait();
    }
}
