//! The hosts file, read as glibc's `files` source reads it, and read again when it changes.
//!
//! hickory reads the hosts file once, when a resolver is built, so an edit was ignored until
//! the daemon restarted. Here the file is checked at every lookup of a name: one `stat`, and a
//! new read only when its device, inode, size, modification or change time differ from the
//! read before (an edit in place, a file renamed over it, a new bind mount), or when the read
//! before was so close to a change that a second change in the same timestamp tick could hide
//! behind equal timestamps (as git treats "racily clean" files). Names found in the file are
//! given the TTL `min_ttl`, so a watched name is looked at again that often: an edit shows
//! within `min_ttl`, and an unchanged file costs one `stat` per name per `min_ttl`.
//!
//! The `stat` and the rare read are plain blocking calls: the file is local and small, a
//! lookup is at most once per `min_ttl` per name, and hickory reads it the same way.

use std::collections::HashMap;
use std::io;
use std::net::IpAddr;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tracing::{debug, info, warn};

use super::answer::sorted_unique;

/// A read that started less than this after the file's last change is not trusted to have
/// seen every change: timestamps are only as fine as the filesystem's granularity (a kernel
/// tick on older kernels, 2 s on FAT), so a second same-size write within one tick would leave
/// them equal. Such a file is read again at the next lookup, until a read starts this long
/// after its last change.
const RACY_WINDOW: Duration = Duration::from_secs(2);

/// A hosts file and what it said when last read.
#[derive(Debug)]
pub(crate) struct HostsFile {
    path: PathBuf,
    racy_window: Duration,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// What the file looked like just before the last read; `None` before the first read and
    /// after a failed one, so that the next lookup reads it.
    stamp: Option<Stamp>,
    /// The last read may have missed a change made in the same timestamp tick.
    racy: bool,
    /// Lower-case name without a trailing dot → its addresses, sorted, without duplicates.
    names: HashMap<String, Vec<IpAddr>>,
    /// The last read error, so that a lasting one is logged once, not at every lookup.
    error: Option<String>,
    /// Reads so far, for tests and the debug log.
    reads: u64,
}

/// What identifies one version of the file without reading it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stamp {
    /// No file at the path: no names.
    Missing,
    Present {
        dev: u64,
        ino: u64,
        len: u64,
        mtime: (i64, i64),
        ctime: (i64, i64),
    },
}

impl Stamp {
    fn of(path: &Path) -> io::Result<Stamp> {
        match std::fs::metadata(path) {
            Ok(meta) => Ok(Stamp::Present {
                dev: meta.dev(),
                ino: meta.ino(),
                len: meta.len(),
                mtime: (meta.mtime(), meta.mtime_nsec()),
                ctime: (meta.ctime(), meta.ctime_nsec()),
            }),
            Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(Stamp::Missing),
            Err(error) => Err(error),
        }
    }

    /// When the file last changed (the later of ctime and mtime: mtime can be set forward).
    fn changed_at(self) -> Option<SystemTime> {
        let Stamp::Present { mtime, ctime, .. } = self else {
            return None;
        };
        let at = |(secs, nanos): (i64, i64)| {
            let secs = u64::try_from(secs).ok()?;
            let nanos = u32::try_from(nanos).ok()?;
            UNIX_EPOCH.checked_add(Duration::new(secs, nanos))
        };
        at(mtime).max(at(ctime))
    }
}

impl HostsFile {
    /// The file at `path`, not read yet: the first lookup reads it. A missing file has no
    /// names (and is read once it appears).
    pub(crate) fn new(path: PathBuf) -> HostsFile {
        HostsFile::with_racy_window(path, RACY_WINDOW)
    }

    fn with_racy_window(path: PathBuf, racy_window: Duration) -> HostsFile {
        HostsFile {
            path,
            racy_window,
            state: Mutex::new(State::default()),
        }
    }

    /// Where the file is.
    #[cfg(test)]
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// The addresses the file gives `host` (any case, with or without a trailing dot), sorted
    /// (IPv4 first), or `None` when the file does not name it. Reads the file again first if
    /// it changed. If it cannot be read, the last contents read are used and the error is
    /// logged once.
    pub(crate) fn lookup(&self, host: &str) -> Option<Vec<IpAddr>> {
        // A panic elsewhere while holding the lock cannot leave the state half-written: every
        // field is replaced whole below.
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        self.refresh(&mut state);
        state.names.get(&normalize(host)).cloned()
    }

    fn refresh(&self, state: &mut State) {
        let stamp = match Stamp::of(&self.path) {
            Ok(stamp) => stamp,
            Err(error) => return self.failed(state, &error),
        };
        if state.stamp == Some(stamp) && !state.racy {
            return;
        }
        // Taken before the read: a change during the read makes the next stamp differ.
        let started = SystemTime::now();
        let names = match stamp {
            Stamp::Missing => HashMap::new(),
            Stamp::Present { .. } => match std::fs::read_to_string(&self.path) {
                Ok(text) => parse(&text),
                // Removed between the stat and the read: the next lookup sees it missing.
                Err(error) => return self.failed(state, &error),
            },
        };
        state.reads += 1;
        state.racy = stamp.changed_at().is_some_and(|changed| {
            started
                .duration_since(changed)
                .map_or(true, |age| age < self.racy_window)
        });
        if state.error.take().is_some() {
            info!(path = %self.path.display(), "hosts file readable again");
        }
        if names != state.names {
            // The first read of a resolver is not news; later ones are edits.
            if state.reads > 1 {
                info!(path = %self.path.display(), names = names.len(), "hosts file changed");
            }
            state.names = names;
        } else {
            debug!(path = %self.path.display(), reads = state.reads, "hosts file read, unchanged");
        }
        state.stamp = Some(stamp);
    }

    fn failed(&self, state: &mut State, error: &io::Error) {
        let message = error.to_string();
        if state.error.as_ref() != Some(&message) {
            warn!(
                path = %self.path.display(),
                error = %message,
                "cannot read the hosts file; keeping what it said before"
            );
        }
        state.error = Some(message);
        state.stamp = None;
    }

    #[cfg(test)]
    fn reads(&self) -> u64 {
        self.state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .reads
    }
}

/// `addr name [alias...]` lines; `#` starts a comment; lines whose first word is not an IP
/// address are skipped, as glibc does.
fn parse(text: &str) -> HashMap<String, Vec<IpAddr>> {
    let mut names: HashMap<String, Vec<IpAddr>> = HashMap::new();
    for line in text.lines() {
        let line = line.split_once('#').map_or(line, |(data, _)| data);
        let mut words = line.split_whitespace();
        let Some(Ok(ip)) = words.next().map(str::parse::<IpAddr>) else {
            continue;
        };
        for name in words {
            names.entry(normalize(name)).or_default().push(ip);
        }
    }
    names
        .into_iter()
        .map(|(name, addrs)| (name, sorted_unique(addrs)))
        .collect()
}

fn normalize(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    /// A directory of the test's own under the system's temporary directory, removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(tag: &str) -> TempDir {
            static NEXT: AtomicU32 = AtomicU32::new(0);
            let dir = std::env::temp_dir().join(format!(
                "failoverd-hosts-{tag}-{}-{}",
                std::process::id(),
                NEXT.fetch_add(1, Ordering::Relaxed)
            ));
            std::fs::create_dir_all(&dir).expect("temporary directory");
            TempDir(dir)
        }

        fn file(&self) -> PathBuf {
            self.0.join("hosts")
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            if let Err(error) = std::fs::remove_dir_all(&self.0) {
                eprintln!("cannot remove {}: {error}", self.0.display());
            }
        }
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().expect("test address")
    }

    fn write(path: &Path, text: &str) {
        std::fs::write(path, text).expect("write the test hosts file");
    }

    #[test]
    fn names_and_aliases_of_both_families_are_read_and_comments_skipped() {
        let names = parse(
            "# a comment\n\
             127.0.0.1\tlocalhost db.Internal. # trailing comment\n\
             ::1 localhost ip6-localhost\n\
             not-an-address ignored\n\
             127.0.0.2 db.internal\n\
             127.0.0.1 localhost\n\
             \n   \n",
        );
        assert_eq!(names["localhost"], vec![ip("127.0.0.1"), ip("::1")]);
        assert_eq!(names["db.internal"], vec![ip("127.0.0.1"), ip("127.0.0.2")]);
        assert_eq!(names["ip6-localhost"], vec![ip("::1")]);
        assert!(!names.contains_key("ignored"));
        assert_eq!(names.len(), 3);
    }

    #[test]
    fn lookup_ignores_case_and_a_trailing_dot_and_misses_unknown_names() {
        let dir = TempDir::new("case");
        write(&dir.file(), "127.0.0.5 DB.internal\n");
        let hosts = HostsFile::new(dir.file());
        assert_eq!(hosts.lookup("db.INTERNAL."), Some(vec![ip("127.0.0.5")]));
        assert_eq!(hosts.lookup("other.internal"), None);
    }

    #[test]
    fn an_unchanged_file_is_not_read_again() {
        let dir = TempDir::new("unchanged");
        write(&dir.file(), "127.0.0.5 db\n");
        let hosts = HostsFile::with_racy_window(dir.file(), Duration::ZERO);
        for _ in 0..3 {
            assert_eq!(hosts.lookup("db"), Some(vec![ip("127.0.0.5")]));
        }
        assert_eq!(hosts.reads(), 1);
    }

    #[test]
    fn an_edit_in_place_of_the_same_size_is_seen_at_the_next_lookup() {
        let dir = TempDir::new("edit");
        write(&dir.file(), "127.0.0.5 db\n");
        // No racy re-reads: only the changed stamp can reveal the edit.
        let hosts = HostsFile::with_racy_window(dir.file(), Duration::ZERO);
        assert_eq!(hosts.lookup("db"), Some(vec![ip("127.0.0.5")]));
        write(&dir.file(), "127.0.0.6 db\n");
        // Kernels with coarse timestamps can give two writes in one tick equal times (that is
        // what the racy window is for); an explicit mtime keeps this test about the stamp.
        std::fs::File::options()
            .write(true)
            .open(dir.file())
            .and_then(|f| f.set_modified(UNIX_EPOCH + Duration::from_secs(1_000_000)))
            .expect("set the edited file's mtime");
        assert_eq!(hosts.lookup("db"), Some(vec![ip("127.0.0.6")]));
        assert_eq!(hosts.reads(), 2);
    }

    #[test]
    fn a_file_renamed_over_the_path_is_seen_at_the_next_lookup() {
        let dir = TempDir::new("rename");
        write(&dir.file(), "127.0.0.5 db\n");
        let hosts = HostsFile::with_racy_window(dir.file(), Duration::ZERO);
        assert_eq!(hosts.lookup("db"), Some(vec![ip("127.0.0.5")]));
        let next = dir.0.join("hosts.new");
        write(&next, "127.0.0.7 db\n");
        std::fs::rename(&next, dir.file()).expect("rename over the hosts file");
        assert_eq!(hosts.lookup("db"), Some(vec![ip("127.0.0.7")]));
    }

    #[test]
    fn a_missing_file_names_nothing_until_it_appears() {
        let dir = TempDir::new("missing");
        let hosts = HostsFile::with_racy_window(dir.file(), Duration::ZERO);
        assert_eq!(hosts.lookup("db"), None);
        write(&dir.file(), "127.0.0.8 db\n");
        assert_eq!(hosts.lookup("db"), Some(vec![ip("127.0.0.8")]));
        std::fs::remove_file(dir.file()).expect("remove the hosts file");
        assert_eq!(hosts.lookup("db"), None);
    }

    #[test]
    fn a_file_changed_just_before_its_read_is_read_again_at_the_next_lookup() {
        let dir = TempDir::new("racy");
        write(&dir.file(), "127.0.0.5 db\n");
        // Written moments ago: well inside the window, so its timestamps are not trusted yet.
        let hosts = HostsFile::with_racy_window(dir.file(), Duration::from_secs(3600));
        hosts.lookup("db");
        hosts.lookup("db");
        assert_eq!(hosts.reads(), 2);
    }

    #[test]
    fn an_unreadable_file_keeps_the_names_read_before() {
        let dir = TempDir::new("unreadable");
        write(&dir.file(), "127.0.0.5 db\n");
        let hosts = HostsFile::with_racy_window(dir.file(), Duration::ZERO);
        assert_eq!(hosts.lookup("db"), Some(vec![ip("127.0.0.5")]));
        // A directory in its place: the stat works, the read fails (even as root).
        std::fs::remove_file(dir.file()).expect("remove the hosts file");
        std::fs::create_dir(dir.file()).expect("a directory at the hosts path");
        assert_eq!(hosts.lookup("db"), Some(vec![ip("127.0.0.5")]));
    }
}
