//! `--reload-engine poll`: changes found by reading the watched trees again
//! every [`POLL_INTERVAL`], for file systems whose changes inotify never
//! hears of (Docker Desktop's and WSL2's mounts of the host's files, NFS,
//! FUSE), or when inotify has no instance or watch left.
//!
//! A walk of its own rather than notify's `PollWatcher`: that one reads
//! everything below a directory, `.git`, `.venv` and `node_modules`
//! included, and 30 s apart by default; this one goes where the filter lets
//! the inotify walk go, and stats only the files it wants.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet};
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc::UnboundedSender;

use super::filter::Filter;
use super::watches::{identity, DirId, Notice};

/// Time between two passes over the trees: what a change waits at most to
/// be seen, before `--reload-delay`. watchfiles polls every 0.3 s and
/// Django's StatReloader every 1 s; notify's `PollWatcher` default of 30 s
/// would leave an edit unseen for longer than it takes to make the next.
pub(crate) const POLL_INTERVAL: Duration = Duration::from_secs(1);

/// The pause after a pass is this many times as long as the pass at least:
/// polling keeps at most a fifth of a core busy, however big the tree or
/// slow the file system. A pass over a tree of a few thousand files takes
/// milliseconds, so only a huge one (100,000 files: 0.6 s, cache warm) waits
/// longer than [`POLL_INTERVAL`], and has its changes seen that much later.
const PAUSE_PER_PASS: u32 = 4;

/// What tells that a file changed: a write changes its modification time
/// (and mostly its size), a save by rename its inode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Stamp {
    modified: (i64, i64),
    size: u64,
    id: (u64, u64),
}

impl Stamp {
    fn of(metadata: &std::fs::Metadata) -> Self {
        Self {
            modified: (metadata.mtime(), metadata.mtime_nsec()),
            size: metadata.size(),
            id: (metadata.dev(), metadata.ino()),
        }
    }
}

/// The wanted files one pass found, and what it took.
pub(super) struct Snapshot {
    files: HashMap<PathBuf, Stamp>,
    /// Directories read, and the entries in them.
    dirs: usize,
    entries: usize,
    took: Duration,
    /// Directories that could not be read (not those gone meanwhile).
    unreadable: Vec<(PathBuf, std::io::Error)>,
}

impl Snapshot {
    /// Reads the trees below the filter's roots. Directories and links to
    /// them are walked as the inotify walk watches them: where the filter
    /// lets it, each directory once. Links are followed after every real
    /// directory, in the order of their paths, so that a directory two
    /// paths lead to is found by the same one at every pass, preferably
    /// not through a link: found by another, its files would look new.
    /// Every directory walked is one the filter keeps, or a root.
    pub(super) fn take(filter: &Filter) -> Self {
        let started = Instant::now();
        let mut snapshot = Snapshot {
            files: HashMap::new(),
            dirs: 0,
            entries: 0,
            took: Duration::ZERO,
            unreadable: Vec::new(),
        };
        let mut visited: HashSet<DirId> = HashSet::new();
        let mut dirs: Vec<PathBuf> = filter.roots.iter().rev().cloned().collect();
        let mut links: BinaryHeap<Reverse<PathBuf>> = BinaryHeap::new();
        while let Some(dir) = dirs.pop().or_else(|| links.pop().map(|Reverse(link)| link)) {
            // None: gone since it was listed.
            let Some(id) = identity(&dir) else {
                continue;
            };
            if !visited.insert(id) {
                continue;
            }
            let entries = match std::fs::read_dir(&dir) {
                Ok(entries) => entries,
                Err(err) => {
                    if err.kind() != std::io::ErrorKind::NotFound {
                        snapshot.unreadable.push((dir, err));
                    }
                    continue;
                }
            };
            snapshot.dirs += 1;
            for entry in entries.flatten() {
                snapshot.entries += 1;
                let path = entry.path();
                let Ok(kind) = entry.file_type() else {
                    continue;
                };
                let link_to_dir = kind.is_symlink() && path.metadata().is_ok_and(|m| m.is_dir());
                if kind.is_dir() || link_to_dir {
                    if !filter.watches_dir(&path) {
                        continue;
                    }
                    if link_to_dir {
                        links.push(Reverse(path));
                    } else {
                        dirs.push(path);
                    }
                } else if filter.wants_in_kept_dir(&path) {
                    // Err: gone since it was listed, or a dangling link.
                    if let Ok(metadata) = path.metadata() {
                        snapshot.files.insert(path, Stamp::of(&metadata));
                    }
                }
            }
        }
        snapshot.took = started.elapsed();
        snapshot
    }

    /// The wanted files that appeared, changed or went away since `earlier`.
    fn changes_since(&self, earlier: &Snapshot) -> Vec<PathBuf> {
        let written = (self.files.iter())
            .filter(|(path, stamp)| earlier.files.get(*path) != Some(stamp))
            .map(|(path, _)| path);
        let gone = (earlier.files.keys()).filter(|path| !self.files.contains_key(*path));
        written.chain(gone).cloned().collect()
    }
}

/// Polls on a thread of its own from `baseline`, the pass that the changes
/// are measured from, sending what changed; the thread ends once nobody
/// listens. An Err if the thread could not start.
pub(super) fn spawn(
    filter: Arc<Filter>,
    sender: UnboundedSender<Notice>,
    baseline: Snapshot,
) -> std::io::Result<()> {
    let mut poller = Poller {
        filter,
        sender,
        warned_slow: false,
        warned_unreadable: HashSet::new(),
    };
    std::thread::Builder::new()
        .name("rsasgi-reload-poll".into())
        .spawn(move || {
            let mut last = baseline;
            loop {
                std::thread::sleep(poller.pause_after(&last));
                if poller.sender.is_closed() {
                    return;
                }
                let snapshot = Snapshot::take(&poller.filter);
                for path in snapshot.changes_since(&last) {
                    if poller.sender.send(Notice::Changed(path)).is_err() {
                        return;
                    }
                }
                last = snapshot;
            }
        })
        .map(drop)
}

struct Poller {
    filter: Arc<Filter>,
    sender: UnboundedSender<Notice>,
    /// Whether the first pass longer than the interval was warned of.
    warned_slow: bool,
    /// Directories said to be unreadable, each once.
    warned_unreadable: HashSet<PathBuf>,
}

impl Poller {
    /// How long to wait after `pass` before the next: logs its size, and
    /// warns (once) when it took too long to poll every interval.
    fn pause_after(&mut self, pass: &Snapshot) -> Duration {
        tracing::debug!(
            "--reload: polled {} wanted files ({} entries in {} directories) in {:.1?}",
            pass.files.len(),
            pass.entries,
            pass.dirs,
            pass.took
        );
        for (dir, err) in &pass.unreadable {
            if self.warned_unreadable.insert(dir.clone()) {
                tracing::warn!(
                    "--reload: cannot read {} ({err}): changes in it are not seen",
                    dir.display()
                );
            }
        }
        let pause = pause_after(pass.took);
        if pause > POLL_INTERVAL && !self.warned_slow {
            self.warned_slow = true;
            tracing::warn!(
                "--reload: reading the watched trees took {:.1?} ({} entries in {} \
                 directories), too long to poll every {} s: polling waits {} times as long as \
                 a pass takes, {:.1?} after this one, so that it keeps at most a fifth of a \
                 core busy, and changes are seen that much later; narrow --reload-dir / \
                 --reload-exclude, or use inotify (--reload-engine inotify) where the file \
                 system supports it",
                pass.took,
                pass.entries,
                pass.dirs,
                POLL_INTERVAL.as_secs(),
                PAUSE_PER_PASS,
                pause
            );
        }
        pause
    }
}

/// The pause after a pass that took `took`: the interval, or more after a
/// slow pass, so that polling never keeps a core busy.
fn pause_after(took: Duration) -> Duration {
    POLL_INTERVAL.max(took * PAUSE_PER_PASS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::path::Path;

    fn filter(root: &Path) -> Filter {
        let strings =
            |patterns: &[&str]| patterns.iter().map(|p| p.to_string()).collect::<Vec<_>>();
        let root = root.canonicalize().expect("canonical temp dir");
        Filter::new(vec![root], &strings(&["*.py"]), &strings(&[".*", "build"])).expect("filter")
    }

    fn names(root: &Path, mut paths: Vec<PathBuf>) -> Vec<String> {
        let root = root.canonicalize().expect("canonical temp dir");
        paths.sort();
        (paths.iter())
            .map(|path| {
                path.strip_prefix(&root)
                    .expect("below root")
                    .display()
                    .to_string()
            })
            .collect()
    }

    #[test]
    fn a_pass_finds_the_wanted_files_where_the_filter_lets_it() {
        let dir = tempfile::tempdir().expect("temp dir");
        let root = dir.path();
        for sub in ["pkg", ".git", "build", "__pycache__", "env/lib"] {
            fs::create_dir_all(root.join(sub)).expect("mkdir");
        }
        for file in [
            "app.py",
            "notes.txt",
            "pkg/views.py",
            ".git/hook.py",
            "build/lib.py",
        ] {
            fs::write(root.join(file), "x = 1\n").expect("write");
        }
        fs::write(root.join("__pycache__/app.py"), "").expect("write");
        fs::write(root.join("env/pyvenv.cfg"), "").expect("write");
        fs::write(root.join("env/lib/os.py"), "").expect("write");
        std::os::unix::fs::symlink("..", root.join("pkg/up")).expect("link");

        let snapshot = Snapshot::take(&filter(root));
        let found = names(root, snapshot.files.keys().cloned().collect());
        assert_eq!(found, ["app.py", "pkg/views.py"]);
    }

    #[test]
    fn written_new_and_removed_files_are_changes() {
        let dir = tempfile::tempdir().expect("temp dir");
        let root = dir.path();
        for file in ["kept.py", "written.py", "removed.py"] {
            fs::write(root.join(file), "x = 1\n").expect("write");
        }
        let filter = filter(root);
        let before = Snapshot::take(&filter);
        assert!(Snapshot::take(&filter).changes_since(&before).is_empty());

        fs::write(root.join("written.py"), "x = 22\n").expect("write");
        fs::remove_file(root.join("removed.py")).expect("remove");
        fs::write(root.join("new.py"), "x = 1\n").expect("write");
        fs::write(root.join("new.txt"), "x = 1\n").expect("write");
        let changes = Snapshot::take(&filter).changes_since(&before);
        assert_eq!(names(root, changes), ["new.py", "removed.py", "written.py"]);
    }

    #[test]
    fn a_file_replaced_by_rename_is_a_change_even_with_the_same_time_and_size() {
        let dir = tempfile::tempdir().expect("temp dir");
        let root = dir.path();
        let app = root.join("app.py");
        fs::write(&app, "x = 1\n").expect("write");
        let filter = filter(root);
        let before = Snapshot::take(&filter);

        // An editor's save: a new file renamed over the old one.
        let saved = root.join(".app.py.swp");
        fs::write(&saved, "x = 2\n").expect("write");
        let old_time = fs::metadata(&app).expect("stat").modified().expect("mtime");
        fs::File::options()
            .write(true)
            .open(&saved)
            .and_then(|file| file.set_modified(old_time))
            .expect("set mtime");
        fs::rename(&saved, &app).expect("rename");
        let changes = Snapshot::take(&filter).changes_since(&before);
        assert_eq!(names(root, changes), ["app.py"]);
    }

    #[test]
    fn a_directory_that_cannot_be_read_is_noted_and_one_gone_is_not() {
        let dir = tempfile::tempdir().expect("temp dir");
        // Root reads any directory: a root that is no directory fails to read as one
        // without rights would.
        let not_a_dir = dir.path().join("file");
        fs::write(&not_a_dir, "").expect("file");
        let pass = Snapshot::take(&filter(&not_a_dir));
        assert_eq!(pass.unreadable.len(), 1);
        assert_eq!(pass.unreadable[0].0, not_a_dir.canonicalize().unwrap());
        fs::remove_file(&not_a_dir).expect("removed");
        let gone = dir.path().join("gone");
        fs::create_dir(&gone).expect("dir");
        let filter = filter(&gone);
        fs::remove_dir(&gone).expect("removed");
        assert!(Snapshot::take(&filter).unreadable.is_empty());
    }

    #[test]
    fn a_slow_pass_is_followed_by_a_longer_pause() {
        assert_eq!(pause_after(Duration::from_millis(20)), POLL_INTERVAL);
        assert_eq!(
            pause_after(Duration::from_millis(600)),
            Duration::from_millis(2400)
        );
        assert_eq!(pause_after(Duration::from_secs(2)), Duration::from_secs(8));
    }
}
