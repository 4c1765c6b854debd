//! How long each hook's freeze took in recent runs (a small file in the
//! state dir), and the schedule a parallel group gets from it: the quick
//! hooks start later, so that all finish together and no lock is held while
//! a slower hook still quiesces.

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::fs;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::text::{decode_field, encode_field};

/// Runs remembered per hook.
const KEPT: usize = 5;

/// A freeze longer than this is no duration to schedule by: a file written
/// by hand, or damaged (a day; `phase_timeout` is minutes).
const ABSURD_MS: u64 = 24 * 3600 * 1000;

/// Recent freeze durations, by hook name.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct History {
    runs: BTreeMap<OsString, Vec<u64>>,
}

fn path(state_dir: &Path) -> PathBuf {
    state_dir.join("durations")
}

/// The file's text, if it is a regular file (a link there is not followed).
fn read_plain(path: &Path) -> Option<String> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
        .ok()?;
    if !file.metadata().ok()?.is_file() {
        return None;
    }
    let mut text = String::new();
    file.read_to_string(&mut text).ok()?;
    Some(text)
}

impl History {
    /// What the state dir remembers; nothing when it has no (readable) file.
    pub fn load(state_dir: &Path) -> History {
        let text = read_plain(&path(state_dir)).unwrap_or_default();
        let mut runs = BTreeMap::new();
        for line in text.lines() {
            let Some((name, list)) = line.split_once(' ') else {
                continue;
            };
            let Some(name) = decode_field(name).filter(|n| !n.is_empty()) else {
                continue;
            };
            let ms: Vec<u64> = list
                .split(',')
                .filter_map(|m| m.parse().ok())
                .filter(|m| *m <= ABSURD_MS)
                .collect();
            if !ms.is_empty() {
                runs.insert(OsString::from_vec(name), ms);
            }
        }
        History { runs }
    }

    /// Adds a freeze that ran to success, keeping the last few.
    pub fn add(&mut self, name: &OsStr, took: Duration) {
        let list = self.runs.entry(name.to_os_string()).or_default();
        list.push(took.as_millis() as u64);
        if list.len() > KEPT {
            list.remove(0);
        }
    }

    /// Writes it back (temp file, then rename: never half a file).
    pub fn save(&self, state_dir: &Path) -> std::io::Result<()> {
        let mut text = String::new();
        for (name, ms) in &self.runs {
            let list: Vec<String> = ms.iter().map(u64::to_string).collect();
            text.push_str(&format!(
                "{} {}\n",
                encode_field(name.as_bytes()),
                list.join(",")
            ));
        }
        let tmp = state_dir.join(".durations.tmp");
        crate::sys::paths::replace_file(&path(state_dir), &tmp, text.as_bytes(), 0o600, false)
    }

    /// The freeze time to expect of a hook: the median of its recent runs.
    pub fn expected(&self, name: &OsStr) -> Option<Duration> {
        let mut ms = self.runs.get(name)?.clone();
        ms.sort_unstable();
        Some(Duration::from_millis(ms[ms.len() / 2]))
    }

    /// When each of `names` (one parallel group) starts, after the group's
    /// start: the slowest at once, each other one later by as much as it is
    /// quicker. A hook without history: everyone starts at once.
    pub fn schedule(&self, names: &[&OsStr]) -> Vec<Duration> {
        let expected: Option<Vec<Duration>> = names.iter().map(|n| self.expected(n)).collect();
        let Some(expected) = expected else {
            return vec![Duration::ZERO; names.len()];
        };
        let longest = expected.iter().copied().max().unwrap_or_default();
        expected.iter().map(|e| longest - *e).collect()
    }
}

/// What the freeze hooks' durations (`hooks`, in run order) make of the
/// applications' pause, and what the other mode would: one after another
/// the freeze phase takes the sum, and the first hook's application, held
/// from the end of its hook, waits for every other; together (`parallel =
/// true`, scheduled to finish at once) it takes the longest, and none waits
/// for another. `None` for fewer than two hooks, or when parallel hooks
/// would save less than 100 ms.
pub fn pause_advice(hooks: &[(&OsStr, Duration)], parallel: bool) -> Option<String> {
    let (first, first_took) = *hooks.first()?;
    if hooks.len() < 2 {
        return None;
    }
    let sum: Duration = hooks.iter().map(|(_, d)| *d).sum();
    let longest = hooks.iter().map(|(_, d)| *d).max()?;
    if sum.saturating_sub(longest) < Duration::from_millis(100) {
        return None;
    }
    let about = |d: Duration| {
        if d >= Duration::from_secs(1) {
            format!("{:.1} s", d.as_secs_f64())
        } else {
            format!("{} ms", d.as_millis())
        }
    };
    Some(if parallel {
        format!(
            "the freeze hooks run together (parallel = true): about {}, where one after another they would take about {}",
            about(longest),
            about(sum)
        )
    } else {
        format!(
            "the freeze hooks take about {} one after another ({} held {} of it, waiting for the others); with parallel = true about {}, all finishing together",
            about(sum),
            crate::text::escape(first),
            about(sum - first_took),
            about(longest)
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pause_one_after_another_and_together() {
        let (app, db) = (OsStr::new("10-app"), OsStr::new("20-pg"));
        let hooks = [(app, ms(300)), (db, ms(3000))];
        assert_eq!(
            pause_advice(&hooks, false).as_deref(),
            Some(
                "the freeze hooks take about 3.3 s one after another (10-app held 3.0 s of it, waiting for the others); with parallel = true about 3.0 s, all finishing together"
            )
        );
        assert_eq!(
            pause_advice(&hooks, true).as_deref(),
            Some(
                "the freeze hooks run together (parallel = true): about 3.0 s, where one after another they would take about 3.3 s"
            )
        );
        // One hook, or nothing worth saying.
        assert_eq!(pause_advice(&hooks[..1], false), None);
        assert_eq!(pause_advice(&[(app, ms(30)), (db, ms(3000))], false), None);
        assert_eq!(
            pause_advice(&[(app, ms(120)), (db, ms(200))], false).as_deref(),
            Some(
                "the freeze hooks take about 320 ms one after another (10-app held 200 ms of it, waiting for the others); with parallel = true about 200 ms, all finishing together"
            )
        );
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn the_quick_start_later_so_that_all_finish_together() {
        let mut h = History::default();
        let (slow, quick, odd) = (
            OsStr::new("20-pg"),
            OsStr::new("10-app"),
            OsStr::new("3 a%\n"),
        );
        for t in [900, 1000, 5000, 1100, 950] {
            h.add(slow, ms(t));
        }
        h.add(quick, ms(100));
        // One odd run does not move the median.
        assert_eq!(h.expected(slow), Some(ms(1000)));
        assert_eq!(h.schedule(&[quick, slow]), [ms(900), ms(0)]);
        // No history for one of them: all at once.
        assert_eq!(h.schedule(&[quick, odd]), [ms(0), ms(0)]);
        // Kept across runs, any name, the last few runs only.
        h.add(odd, ms(7));
        for _ in 0..10 {
            h.add(quick, ms(200));
        }
        let dir = tempfile::tempdir().unwrap();
        h.save(dir.path()).unwrap();
        let back = History::load(dir.path());
        assert_eq!(back, h);
        assert_eq!(back.runs[quick].len(), KEPT);
        assert_eq!(History::load(&dir.path().join("none")), History::default());
    }

    #[test]
    fn absurd_durations_and_a_link_are_ignored() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(
            path(dir.path()),
            "10-a 99999999999999999,-5,x,1e9,NaN\n20-b 100,200\n",
        )
        .unwrap();
        let h = History::load(dir.path());
        assert_eq!(h.expected(OsStr::new("10-a")), None);
        assert_eq!(h.expected(OsStr::new("20-b")), Some(ms(200)));
        // A link at the file's name: not followed, nothing known.
        let other = tempfile::tempdir().unwrap();
        fs::rename(path(dir.path()), other.path().join("d")).unwrap();
        std::os::unix::fs::symlink(other.path().join("d"), path(dir.path())).unwrap();
        assert_eq!(History::load(dir.path()), History::default());
    }
}
