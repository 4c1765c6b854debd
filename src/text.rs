//! Text that leaves the program: names, paths and hooks' output lines
//! escaped so that each prints as exactly one line, whatever bytes it holds.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// Escapes control characters and bytes that are not UTF-8, so that any file
/// name prints as one line.
pub fn escape(name: &OsStr) -> String {
    escape_bytes(name.as_bytes(), false)
}

/// One line of a hook's output for the text log: as [`escape`] does for
/// names, but tab is kept; the line can so hold no newline, carriage return,
/// escape sequence or NUL of its own.
pub fn escape_line(line: &[u8]) -> String {
    escape_bytes(line, true)
}

/// [`escape`] for a path.
pub fn escape_path(path: &Path) -> String {
    escape(path.as_os_str())
}

/// Names, escaped, joined by ", ".
pub fn names<S: AsRef<OsStr>>(names: &[S]) -> String {
    names
        .iter()
        .map(|n| escape(n.as_ref()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// How a command line is named in messages: its program, escaped.
pub fn program<S: AsRef<OsStr>>(command: &[S]) -> String {
    escape(command.first().map_or(OsStr::new("?"), |c| c.as_ref()))
}

/// Whether `needle` (not empty) occurs in `haystack`.
pub fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

/// A byte string as one word of a record file (the journal, enable's
/// record): every byte but printable ASCII other than `%` as `%XX`, so a
/// space, a newline or any other byte round-trips.
pub fn encode_field(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    for &b in bytes {
        if b.is_ascii_graphic() && b != b'%' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The bytes of an [`encode_field`] word; `None` for a broken `%XX`.
pub fn decode_field(text: &str) -> Option<Vec<u8>> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    Some(out)
}

fn escape_bytes(bytes: &[u8], keep_tab: bool) -> String {
    let mut out = String::with_capacity(bytes.len());
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            if c.is_control() && !(keep_tab && c == '\t') {
                out.extend(c.escape_default());
            } else {
                out.push(c);
            }
        }
        for b in chunk.invalid() {
            out.push_str(&format!("\\x{b:02x}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsString;
    use std::os::unix::ffi::OsStringExt;

    #[test]
    fn escape_keeps_one_line() {
        let raw = OsString::from_vec(b"a\nb\xffc".to_vec());
        assert_eq!(escape(&raw), "a\\nb\\xffc");
        assert_eq!(escape_line(b"a\tb\x1b[1m"), "a\tb\\u{1b}[1m");
        assert_eq!(names(&[OsString::from("a b"), raw]), "a b, a\\nb\\xffc");
        assert_eq!(program::<OsString>(&[]), "?");
        let odd = b"a b%\n\xff";
        assert_eq!(encode_field(odd), "a%20b%25%0A%FF");
        assert_eq!(decode_field(&encode_field(odd)).unwrap(), odd);
        assert_eq!(decode_field("%G0"), None);
        assert!(contains(b"a PIPESTATUS[0]", b"PIPESTATUS") && !contains(b"abc", b""));
    }
}
