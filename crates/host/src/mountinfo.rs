//! Parsing /proc/self/mountinfo.
//!
//! The format (proc(5)): `id parent major:minor root mountpoint options
//! [optional fields...] - fstype source superoptions`. Paths escape space, tab,
//! newline and backslash as octal (`\040`). Parsing is pure so it is tested
//! without root; reading the file is the caller's business.

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::path::PathBuf;

use ballast_core::host::MountEntry;

/// Parse a whole mountinfo table. Malformed lines are an error naming the line.
pub(crate) fn parse_mountinfo(text: &[u8]) -> Result<Vec<MountEntry>, String> {
    text.split(|&b| b == b'\n')
        .enumerate()
        .filter(|(_, line)| !line.is_empty())
        .map(|(i, line)| {
            parse_line(line).ok_or_else(|| {
                format!(
                    "malformed mountinfo line {}: {:?}",
                    i + 1,
                    String::from_utf8_lossy(line)
                )
            })
        })
        .collect()
}

/// Parse one mountinfo line; `None` if it does not have the required fields.
pub(crate) fn parse_line(line: &[u8]) -> Option<MountEntry> {
    // Split on single spaces: escaped paths hold no raw space, and an empty
    // source field must stay a field.
    let fields: Vec<&[u8]> = line.split(|&b| b == b' ').collect();
    // Six fixed fields precede the optional ones.
    if fields.len() < 6 {
        return None;
    }
    let root = fields[3];
    let mountpoint = fields[4];
    // The optional fields end at a lone "-".
    let sep = fields[6..].iter().position(|f| *f == b"-")? + 6;
    let fstype = fields.get(sep + 1)?;
    let source = fields.get(sep + 2)?;
    Some(MountEntry {
        source: String::from_utf8_lossy(&unescape(source)).into_owned(),
        target: PathBuf::from(OsString::from_vec(unescape(mountpoint))),
        fstype: String::from_utf8_lossy(&unescape(fstype)).into_owned(),
        root: String::from_utf8_lossy(&unescape(root)).into_owned(),
    })
}

/// Decode the kernel's `\ooo` octal escapes; anything else passes through.
pub(crate) fn unescape(field: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(field.len());
    let mut i = 0;
    while i < field.len() {
        if field[i] == b'\\' {
            if let Some(byte) = field.get(i + 1..i + 4).and_then(octal_byte) {
                out.push(byte);
                i += 4;
                continue;
            }
        }
        out.push(field[i]);
        i += 1;
    }
    out
}

fn octal_byte(digits: &[u8]) -> Option<u8> {
    let mut value: u32 = 0;
    for &d in digits {
        if !(b'0'..=b'7').contains(&d) {
            return None;
        }
        value = value * 8 + u32::from(d - b'0');
    }
    u8::try_from(value).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn plain_line_without_optional_fields() {
        let e =
            parse_line(b"25 1 254:0 / / rw,relatime - ext4 /dev/vda rw,errors=remount-ro").unwrap();
        assert_eq!(e.source, "/dev/vda");
        assert_eq!(e.target, Path::new("/"));
        assert_eq!(e.fstype, "ext4");
        assert_eq!(e.root, "/");
    }

    #[test]
    fn optional_fields_are_skipped() {
        let line = b"36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 shared:7 - ext3 /dev/root rw,errors=continue";
        let e = parse_line(line).unwrap();
        assert_eq!(e.root, "/mnt1");
        assert_eq!(e.target, Path::new("/mnt2"));
        assert_eq!(e.fstype, "ext3");
        assert_eq!(e.source, "/dev/root");
    }

    #[test]
    fn escapes_are_decoded() {
        let line = br"100 25 7:3 /sub\040dir /var/lib/my\040vol\011tab\134back rw shared:9 - xfs /dev/loop3 rw";
        let e = parse_line(line).unwrap();
        assert_eq!(e.target, Path::new("/var/lib/my vol\ttab\\back"));
        assert_eq!(e.root, "/sub dir");
        assert_eq!(e.source, "/dev/loop3");
    }

    #[test]
    fn a_dash_inside_a_path_is_not_the_separator() {
        let line = b"101 25 0:50 / /mnt/- rw - tmpfs tmpfs rw";
        let e = parse_line(line).unwrap();
        assert_eq!(e.target, Path::new("/mnt/-"));
        assert_eq!(e.fstype, "tmpfs");
    }

    #[test]
    fn empty_source_is_kept() {
        let e = parse_line(b"102 25 0:51 / /mnt/x rw - fuse.thing  rw").unwrap();
        assert_eq!(e.source, "");
        assert_eq!(e.fstype, "fuse.thing");
    }

    #[test]
    fn non_utf8_path_is_preserved() {
        let e = parse_line(b"103 25 0:52 / /mnt/\xff rw - tmpfs tmpfs rw").unwrap();
        use std::os::unix::ffi::OsStrExt;
        assert_eq!(e.target.as_os_str().as_bytes(), b"/mnt/\xff");
    }

    #[test]
    fn truncated_lines_are_rejected() {
        assert!(parse_line(b"25 1 254:0 / / rw,relatime ext4 /dev/vda rw").is_none());
        assert!(parse_line(b"25 1 254:0 / / rw -").is_none());
        assert!(parse_line(b"25 1").is_none());
    }

    #[test]
    fn table_parse_names_bad_line() {
        let text = b"25 1 254:0 / / rw - ext4 /dev/vda rw\ngarbage\n";
        let err = parse_mountinfo(text).unwrap_err();
        assert!(err.contains("line 2"), "{err}");
        let ok = parse_mountinfo(b"25 1 254:0 / / rw - ext4 /dev/vda rw\n\n").unwrap();
        assert_eq!(ok.len(), 1);
    }

    #[test]
    fn bad_escapes_pass_through() {
        assert_eq!(unescape(br"a\0b"), br"a\0b");
        assert_eq!(unescape(br"a\777"), br"a\777");
        assert_eq!(unescape(br"end\"), br"end\");
        assert_eq!(unescape(br"\040"), b" ");
    }

    #[test]
    fn real_table_parses() {
        let text = std::fs::read("/proc/self/mountinfo").unwrap();
        let entries = parse_mountinfo(&text).unwrap();
        assert!(entries.iter().any(|e| e.target == Path::new("/")));
    }
}
