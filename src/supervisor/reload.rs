//! The file watcher behind `--reload`: tells the supervisor when the app's
//! source changed, so it can restart the worker.
//!
//! notify's inotify backend runs its own thread. Its callback filters each
//! event there and passes only what matters over a tokio channel, so the
//! runtime never waits on the file system and ignored files never cross.
//! Polling (`--reload-engine poll`, or `auto` when inotify cannot be set
//! up) sends over the same channel from a thread of its own, so both are
//! debounced and logged alike.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use notify::RecommendedWatcher;
use parking_lot::Mutex;
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};
use tokio::time::{timeout_at, Instant};

use filter::Filter;
use poll::{Snapshot, POLL_INTERVAL};
use watches::{on_event, watch_tree, Notice, Unwatched, Watched};

mod filter;
mod poll;
mod watches;

/// Files watched when `--reload-include` adds nothing (uvicorn's default).
pub(crate) const DEFAULT_INCLUDE: &[&str] = &["*.py"];

/// Files ignored when `--reload-exclude` adds nothing (uvicorn's defaults:
/// hidden files and directories, bytecode, vim swap files, backups).
pub(crate) const DEFAULT_EXCLUDE: &[&str] = &[".*", ".py[cod]", ".sw.*", "~*"];

/// How long to wait after the last change before restarting (uvicorn's
/// `--reload-delay`): a save or a `git checkout` touches several files in a
/// burst, which should cost one restart.
pub(crate) const DEFAULT_DELAY: Duration = Duration::from_millis(250);

/// The longest a batch keeps growing (or the delay, if longer): a file
/// rewritten without pause must not hold the restart back for ever.
const MAX_BATCH: Duration = Duration::from_secs(2);

/// The variable uvicorn's watcher, watchfiles, reads to poll rather than
/// use inotify: `poll` when no `--reload-engine` is given.
pub(crate) const WATCHFILES_FORCE_POLLING: &str = "WATCHFILES_FORCE_POLLING";

/// `--reload-engine`: how changes are found.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum ReloadEngine {
    /// inotify, and polling when inotify cannot be set up (no instance or
    /// watch left), with a warning.
    Auto,
    /// inotify only: an error when no instance is left, a warning naming the
    /// directories left unwatched when no watch is.
    Inotify,
    /// Reading the watched directories every second, for file systems whose
    /// changes inotify never hears of.
    Poll,
}

impl ReloadEngine {
    /// The engine when no one chose one: `poll` if [`WATCHFILES_FORCE_POLLING`]
    /// asks for it, as watchfiles reads it (set, and not "false", "disable"
    /// or "disabled"), else `auto`.
    pub(crate) fn unset() -> Self {
        let forced = std::env::var(WATCHFILES_FORCE_POLLING).is_ok_and(|value| {
            !value.is_empty()
                && !["false", "disable", "disabled"].contains(&&*value.to_ascii_lowercase())
        });
        if forced {
            Self::Poll
        } else {
            Self::Auto
        }
    }
}

/// What `--reload` watches; the CLI fills it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ReloadSettings {
    /// Directories watched with everything below them; none means `.`.
    pub(crate) dirs: Vec<PathBuf>,
    /// Glob patterns of the files whose changes restart the worker.
    pub(crate) include: Vec<String>,
    /// Glob patterns of files and directories ignored even when included.
    pub(crate) exclude: Vec<String>,
    /// Quiet time after the last change before the restart.
    pub(crate) delay: Duration,
    pub(crate) engine: ReloadEngine,
}

impl Default for ReloadSettings {
    fn default() -> Self {
        Self {
            dirs: vec![PathBuf::from(".")],
            include: DEFAULT_INCLUDE.iter().map(|p| p.to_string()).collect(),
            exclude: DEFAULT_EXCLUDE.iter().map(|p| p.to_string()).collect(),
            delay: DEFAULT_DELAY,
            engine: ReloadEngine::Auto,
        }
    }
}

impl ReloadSettings {
    /// Adds `--reload-include` and `--reload-exclude` patterns to the current
    /// (default) ones as uvicorn does: a pattern named on one side is dropped
    /// from the other, so `--reload-exclude '*.py'` stops watching Python.
    pub(crate) fn add_patterns(&mut self, include: &[String], exclude: &[String]) {
        self.include.retain(|p| !exclude.contains(p));
        self.exclude.retain(|p| !include.contains(p));
        for (list, added) in [(&mut self.include, include), (&mut self.exclude, exclude)] {
            for pattern in added {
                if !list.contains(pattern) {
                    list.push(pattern.clone());
                }
            }
        }
    }
}

/// Watches the `--reload-dir` trees and reports changes to wanted files.
pub(crate) struct ReloadWatcher {
    engine: Engine,
    /// `--reload-engine auto`: inotify running out of watches at runtime
    /// makes way for polling.
    may_poll: bool,
    filter: Arc<Filter>,
    notices: UnboundedReceiver<Notice>,
    /// Lets tree walks report the files they find; also keeps `notices` open.
    sender: UnboundedSender<Notice>,
    /// The include patterns as given, for `describe`.
    include: Vec<String>,
    delay: Duration,
    /// Changes seen and not yet returned: kept here so that a `changed()`
    /// dropped by `select!` loses nothing.
    pending: BTreeSet<PathBuf>,
}

impl ReloadSettings {
    /// What decides which changes count: the directories (which must exist)
    /// and the patterns (which must parse).
    fn filter(&self) -> Result<Filter, String> {
        let default_dir = [PathBuf::from(".")];
        let dirs = if self.dirs.is_empty() {
            &default_dir[..]
        } else {
            &self.dirs
        };
        let mut roots = Vec::new();
        for dir in dirs {
            match dir.canonicalize() {
                Ok(root) if root.is_dir() => roots.push(root),
                _ => return Err(format!("--reload-dir {}: no such directory", dir.display())),
            }
        }
        Filter::new(roots, &self.include, &self.exclude)
    }

    /// Checks what [`ReloadWatcher::new`] would refuse, without watching
    /// (`--check-config`).
    pub(crate) fn check(&self) -> Result<(), String> {
        self.filter().map(drop)
    }
}

/// What finds the changes.
enum Engine {
    /// One inotify watch per directory.
    Inotify {
        watcher: Arc<Mutex<RecommendedWatcher>>,
        /// The directories watched, by every walk and what notify drops.
        watched: Arc<Mutex<Watched>>,
    },
    /// A thread reading the trees every [`POLL_INTERVAL`]; it ends once the
    /// watcher is dropped.
    Poll,
}

impl Engine {
    /// Sets an inotify watch on every wanted directory; an Err if inotify
    /// cannot start, and what its watch limit left unwatched, if anything.
    fn inotify(
        filter: &Arc<Filter>,
        sender: &UnboundedSender<Notice>,
    ) -> Result<(Self, Vec<Unwatched>), notify::Error> {
        let watched = Arc::new(Mutex::new(Watched::default()));
        let watcher = notify::recommended_watcher({
            let (filter, watched) = (Arc::clone(filter), Arc::clone(&watched));
            let sender = sender.clone();
            move |event| on_event(&filter, &watched, &sender, event)
        })?;
        let watcher = Arc::new(Mutex::new(watcher));
        let unwatched = (filter.roots.iter())
            .filter_map(|root| watch_tree(&watcher, &watched, filter, root, None))
            .collect();
        Ok((Self::Inotify { watcher, watched }, unwatched))
    }

    /// Starts polling from `baseline`, a pass over the trees as they are.
    fn poll(
        filter: &Arc<Filter>,
        sender: &UnboundedSender<Notice>,
        baseline: Snapshot,
    ) -> Result<Self, String> {
        poll::spawn(Arc::clone(filter), sender.clone(), baseline)
            .map(|()| Self::Poll)
            .map_err(|err| {
                format!("--reload: cannot start the thread that polls for changes: {err}")
            })
    }
}

impl ReloadWatcher {
    /// Starts watching; an Err is one line naming the bad directory or
    /// pattern, or why the engine cannot start. Walks the trees once, on the
    /// calling thread.
    pub(crate) fn new(settings: &ReloadSettings) -> Result<Self, String> {
        let filter = Arc::new(settings.filter()?);
        let (sender, notices) = unbounded_channel();
        let may_poll = settings.engine == ReloadEngine::Auto;
        let engine = if settings.engine == ReloadEngine::Poll {
            Engine::poll(&filter, &sender, Snapshot::take(&filter))?
        } else {
            match Engine::inotify(&filter, &sender) {
                Ok((engine, unwatched)) if unwatched.is_empty() => engine,
                Ok((engine, unwatched)) if !may_poll => {
                    unwatched.iter().for_each(Unwatched::warn);
                    engine
                }
                // Dropping the watcher frees the watches it holds.
                Ok((_, unwatched)) => {
                    warn_polling_instead(&unwatched[0].why());
                    Engine::poll(&filter, &sender, Snapshot::take(&filter))?
                }
                Err(err) if may_poll => {
                    warn_polling_instead(&why_no_watcher(&err));
                    Engine::poll(&filter, &sender, Snapshot::take(&filter))?
                }
                Err(err) => {
                    return Err(format!(
                        "--reload: cannot start the file watcher: {}",
                        why_no_watcher(&err)
                    ))
                }
            }
        };
        Ok(Self {
            engine,
            may_poll,
            filter,
            notices,
            sender,
            include: settings.include.clone(),
            delay: settings.delay,
            pending: BTreeSet::new(),
        })
    }

    /// For the startup log, e.g. "Watching for changes in /srv/app (*.py)",
    /// or "Polling every 1 s for changes in /srv/app (*.py)".
    pub(crate) fn describe(&self) -> String {
        let dirs: Vec<_> = self
            .filter
            .roots
            .iter()
            .map(|r| r.display().to_string())
            .collect();
        let how = match self.engine {
            Engine::Inotify { .. } => "Watching for changes".to_string(),
            Engine::Poll => format!("Polling every {} s for changes", POLL_INTERVAL.as_secs()),
        };
        format!("{how} in {} ({})", dirs.join(", "), self.include.join(", "))
    }

    /// Waits for a change to a wanted file, then collects more until none has
    /// come for the delay (for [`MAX_BATCH`] at most); returns the changed
    /// paths, sorted, each once, never none. Cancel-safe (what a dropped call
    /// had seen, the next call returns), but each call starts the quiet period
    /// anew: polled in a `select!` that another branch wins more often than
    /// the delay, it never returns. Give it a task of its own.
    pub(crate) async fn changed(&mut self) -> Vec<PathBuf> {
        while self.pending.is_empty() {
            let notice = self.next_notice().await;
            self.take(notice);
        }
        let last = Instant::now() + self.delay.max(MAX_BATCH);
        loop {
            let quiet = Instant::now() + self.delay;
            match timeout_at(quiet.min(last), self.next_notice()).await {
                Ok(notice) => self.take(notice),
                Err(_elapsed) => break,
            }
        }
        std::mem::take(&mut self.pending).into_iter().collect()
    }

    async fn next_notice(&mut self) -> Notice {
        match self.notices.recv().await {
            Some(notice) => notice,
            // `self.sender` keeps the channel open, so this never happens;
            // if it did, no change could come any more.
            None => std::future::pending().await,
        }
    }

    fn take(&mut self, notice: Notice) {
        match notice {
            Notice::Changed(path) => {
                self.pending.insert(path);
            }
            Notice::NewDir(dir) => self.spawn_walk(vec![dir], Walk::New),
            Notice::Lost => {
                tracing::warn!("--reload: the inotify event queue overflowed and changes were lost; restarting to be safe (raise fs.inotify.max_queued_events if this repeats)");
                self.spawn_walk(self.filter.roots.clone(), Walk::Lost);
                self.pending.extend(self.filter.roots.iter().cloned());
            }
            // What was watched through the link may be reachable by another
            // path; what is not, is no change.
            Notice::Unlinked => self.spawn_walk(self.filter.roots.clone(), Walk::Again),
            Notice::OutOfWatches(why) => self.poll_instead(&why),
        }
    }

    /// Watches trees from the blocking pool, since a `git checkout` can
    /// create many directories. Once the engine polls, a walk has nothing
    /// to do: the next pass finds what is new.
    fn spawn_walk(&self, tops: Vec<PathBuf>, walk: Walk) {
        let Engine::Inotify { watcher, watched } = &self.engine else {
            return;
        };
        let (watcher, watched) = (Arc::clone(watcher), Arc::clone(watched));
        let filter = Arc::clone(&self.filter);
        let sender = self.sender.clone();
        let may_poll = self.may_poll;
        tokio::task::spawn_blocking(move || {
            if walk == Walk::Lost {
                Watched::prune(&watched);
            }
            let mut found = Vec::new();
            for top in tops {
                let report = (walk == Walk::New).then_some(&mut found);
                match watch_tree(&watcher, &watched, &filter, &top, report) {
                    Some(unwatched) if may_poll => {
                        let _ = sender.send(Notice::OutOfWatches(unwatched.why()));
                    }
                    Some(unwatched) => unwatched.warn(),
                    None => {}
                }
            }
            for path in found {
                // Fails only once the watcher is dropped: nobody is waiting.
                let _ = sender.send(Notice::Changed(path));
            }
        });
    }

    /// `--reload-engine auto`, once inotify runs out of watches at runtime
    /// (a `git checkout` or an unpacked archive made many directories):
    /// drops the inotify watches and polls instead. What changed where no
    /// watch was set went unseen, so the workers restart to be safe, as
    /// after lost events.
    fn poll_instead(&mut self, why: &str) {
        if !matches!(self.engine, Engine::Inotify { .. }) {
            return;
        }
        warn_polling_instead(why);
        // Dropping the watcher frees its watches; walks still running on
        // the blocking pool hold it until they end.
        self.engine = Engine::Poll;
        self.pending.extend(self.filter.roots.iter().cloned());
        let (filter, sender) = (Arc::clone(&self.filter), self.sender.clone());
        let polling = self.describe();
        tokio::task::spawn_blocking(move || {
            let baseline = Snapshot::take(&filter);
            match Engine::poll(&filter, &sender, baseline) {
                Ok(_) => tracing::info!("{polling}"),
                Err(message) => {
                    tracing::error!("{message}; changes are no longer seen until rsasgi restarts")
                }
            }
        });
    }
}

/// Says once why `--reload-engine auto` polls, and what that costs.
fn warn_polling_instead(why: &str) {
    tracing::warn!(
        "--reload: cannot watch with inotify, so polling instead: {why}. Polling reads the \
         watched directories every {} s, which costs CPU time in proportion to their size, \
         and sees a change up to {} s later; --reload-engine poll chooses it without this \
         warning",
        POLL_INTERVAL.as_secs(),
        POLL_INTERVAL.as_secs()
    );
}

/// Why a tree is walked at runtime.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Walk {
    /// A directory appeared: its wanted files count as changed, as they may
    /// have been written before its watch was set.
    New,
    /// Events were lost: watches set for directories since removed are
    /// forgotten first, and what was missed is found again.
    Lost,
    /// A link that watches were set through is gone: the directories still
    /// there are watched again through another path.
    Again,
}

/// Why the watcher could not start, as the operator can act on it.
/// `inotify_init` fails with EMFILE, "Too many open files", mostly when the
/// user's inotify instances are used up (editors, IDEs and other watchers
/// take one each), and only then when this process has no descriptor left.
fn why_no_watcher(err: &notify::Error) -> String {
    match &err.kind {
        notify::ErrorKind::Io(io) if io.raw_os_error() == Some(libc::EMFILE) => {
            "no inotify instance left: this user's programs hold as many as \
             fs.inotify.max_user_instances allows (raise it: sysctl \
             fs.inotify.max_user_instances=1024), or rsasgi has as many files open as its \
             limit allows (ulimit -n)"
                .to_string()
        }
        _ => err.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::path::Path;

    /// Long enough that only a missed event reaches it: it fails the test
    /// instead of hanging it.
    const DEADLINE: Duration = Duration::from_secs(10);

    /// A fresh directory and its canonical path, as the watcher reports it.
    fn tree() -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().expect("temp dir");
        let root = dir.path().canonicalize().expect("canonical temp dir");
        (dir, root)
    }

    fn settings(root: &Path) -> ReloadSettings {
        ReloadSettings {
            dirs: vec![root.to_path_buf()],
            delay: Duration::from_millis(50),
            ..ReloadSettings::default()
        }
    }

    async fn next_batch(watcher: &mut ReloadWatcher) -> Vec<PathBuf> {
        let batch = tokio::time::timeout(DEADLINE, watcher.changed()).await;
        batch.expect("no change reported before the deadline")
    }

    fn write(path: PathBuf) -> PathBuf {
        fs::write(&path, "x = 1\n").expect("write");
        path
    }

    #[tokio::test]
    async fn a_written_python_file_is_reported() {
        let (_dir, root) = tree();
        let mut watcher = ReloadWatcher::new(&settings(&root)).expect("watcher");
        let app = write(root.join("app.py"));
        assert_eq!(next_batch(&mut watcher).await, vec![app]);
    }

    #[tokio::test]
    async fn polling_reports_a_written_file_and_not_an_excluded_one() {
        let (_dir, root) = tree();
        fs::create_dir(root.join("build")).expect("mkdir");
        let mut settings = settings(&root);
        settings.add_patterns(&[], &["build".into()]);
        settings.engine = ReloadEngine::Poll;
        let mut watcher = ReloadWatcher::new(&settings).expect("watcher");
        assert!(watcher
            .describe()
            .starts_with("Polling every 1 s for changes in"));
        write(root.join("build/generated.py"));
        let app = write(root.join("app.py"));
        assert_eq!(next_batch(&mut watcher).await, vec![app]);
    }

    // Each "not reported" test writes a wanted file last: the unwanted
    // changes came first, so were they reported, the batch would show them.
    #[tokio::test]
    async fn a_text_file_is_not_reported_by_default() {
        let (_dir, root) = tree();
        let mut watcher = ReloadWatcher::new(&settings(&root)).expect("watcher");
        write(root.join("notes.txt"));
        let app = write(root.join("app.py"));
        assert_eq!(next_batch(&mut watcher).await, vec![app]);
    }

    #[tokio::test]
    async fn reload_include_adds_text_files() {
        let (_dir, root) = tree();
        let mut settings = settings(&root);
        settings.add_patterns(&["*.txt".into()], &[]);
        let mut watcher = ReloadWatcher::new(&settings).expect("watcher");
        let notes = write(root.join("notes.txt"));
        assert_eq!(next_batch(&mut watcher).await, vec![notes]);
    }

    #[tokio::test]
    async fn files_in_excluded_directories_are_not_reported() {
        let (_dir, root) = tree();
        fs::create_dir_all(root.join(".git/hooks")).expect("mkdir");
        fs::create_dir(root.join("__pycache__")).expect("mkdir");
        let mut watcher = ReloadWatcher::new(&settings(&root)).expect("watcher");
        fs::create_dir_all(root.join(".venv/lib")).expect("mkdir");
        write(root.join(".git/hooks/hook.py"));
        write(root.join("__pycache__/app.py"));
        write(root.join(".venv/lib/site.py"));
        let app = write(root.join("app.py"));
        assert_eq!(next_batch(&mut watcher).await, vec![app]);
    }

    #[tokio::test]
    async fn a_virtual_environment_made_after_start_is_not_reported() {
        let (_dir, root) = tree();
        let mut watcher = ReloadWatcher::new(&settings(&root)).expect("watcher");
        // `python -m venv env` makes the directories first: watched by the
        // time pyvenv.cfg is written, as this file's report shows.
        let lib = root.join("env/lib/python3.12");
        fs::create_dir_all(&lib).expect("mkdir");
        let early = write(lib.join("early.py"));
        assert_eq!(next_batch(&mut watcher).await, vec![early]);
        fs::write(root.join("env/pyvenv.cfg"), "home = /usr/bin\n").expect("write");
        write(lib.join("os.py"));
        fs::create_dir(lib.join("encodings")).expect("mkdir");
        write(lib.join("encodings/utf_8.py"));
        let app = write(root.join("app.py"));
        assert_eq!(next_batch(&mut watcher).await, vec![app]);
    }

    #[tokio::test]
    async fn writes_within_the_delay_come_as_one_batch() {
        let (_dir, root) = tree();
        let mut settings = settings(&root);
        settings.delay = Duration::from_secs(1);
        let mut watcher = ReloadWatcher::new(&settings).expect("watcher");
        let written: Vec<_> = ["c.py", "a.py", "b.py"].map(|n| write(root.join(n))).into();
        let mut sorted = written.clone();
        sorted.sort();
        assert_eq!(next_batch(&mut watcher).await, sorted);
    }

    #[tokio::test]
    async fn directories_created_after_start_are_watched() {
        let (_dir, root) = tree();
        let mut watcher = ReloadWatcher::new(&settings(&root)).expect("watcher");
        fs::create_dir_all(root.join("pkg/sub")).expect("mkdir");
        let module = write(root.join("pkg/sub/mod.py"));
        assert_eq!(next_batch(&mut watcher).await, vec![module.clone()]);
        let other = write(root.join("pkg/sub/other.py"));
        assert!(next_batch(&mut watcher).await.contains(&other));
    }

    #[tokio::test]
    async fn directories_linked_into_the_tree_are_watched() {
        let (_dir, root) = tree();
        let (_elsewhere, elsewhere) = tree();
        fs::create_dir(elsewhere.join("shared")).expect("mkdir");
        fs::create_dir(elsewhere.join("later")).expect("mkdir");
        std::os::unix::fs::symlink(elsewhere.join("shared"), root.join("shared")).expect("link");
        let mut watcher = ReloadWatcher::new(&settings(&root)).expect("watcher");
        let shared = write(root.join("shared/lib.py"));
        assert_eq!(next_batch(&mut watcher).await, vec![shared]);

        std::os::unix::fs::symlink(elsewhere.join("later"), root.join("later")).expect("link");
        let later = write(root.join("later/lib.py"));
        assert_eq!(next_batch(&mut watcher).await, vec![later]);
    }

    #[tokio::test]
    async fn a_link_back_up_the_tree_ends_the_walk() {
        let (_dir, root) = tree();
        fs::create_dir(root.join("pkg")).expect("mkdir");
        std::os::unix::fs::symlink("..", root.join("pkg/up")).expect("link");
        let mut watcher = ReloadWatcher::new(&settings(&root)).expect("watcher");
        let module = write(root.join("pkg/mod.py"));
        assert_eq!(next_batch(&mut watcher).await, vec![module]);

        // Made at runtime, it is walked from below the root; followed, the
        // walk would report the files it found there by their new names.
        std::os::unix::fs::symlink("..", root.join("pkg/top")).expect("link");
        let app = write(root.join("app.py"));
        assert_eq!(next_batch(&mut watcher).await, vec![app]);
    }

    #[tokio::test]
    async fn a_link_made_and_removed_leaves_its_directory_watched() {
        let (_dir, root) = tree();
        fs::create_dir_all(root.join("pkg/sub")).expect("mkdir");
        write(root.join("pkg/sub/mod.py"));
        let mut watcher = ReloadWatcher::new(&settings(&root)).expect("watcher");
        // A second path to a watched directory is not walked: its files
        // would be reported as changed, by their new names.
        std::os::unix::fs::symlink("pkg/sub", root.join("short")).expect("link");
        let app = write(root.join("app.py"));
        assert_eq!(next_batch(&mut watcher).await, vec![app.clone()]);

        fs::remove_file(root.join("short")).expect("unlink");
        let module = write(root.join("pkg/sub/mod.py"));
        write(app.clone());
        assert_eq!(next_batch(&mut watcher).await, vec![app, module]);
    }

    #[tokio::test]
    async fn a_removed_link_that_a_directory_was_watched_through_leaves_it_watched() {
        // Whichever link the directory was watched through, the other is
        // removed by one of the two rounds.
        for removed in ["ext", "pkg/alias"] {
            let (_dir, root) = tree();
            let (_elsewhere, elsewhere) = tree();
            fs::create_dir_all(elsewhere.join("ext/deep")).expect("mkdir");
            fs::create_dir(root.join("pkg")).expect("mkdir");
            std::os::unix::fs::symlink(elsewhere.join("ext"), root.join("ext")).expect("link");
            std::os::unix::fs::symlink(elsewhere.join("ext"), root.join("pkg/alias"))
                .expect("link");
            let mut watcher = ReloadWatcher::new(&settings(&root)).expect("watcher");
            fs::remove_file(root.join(removed)).expect("unlink");
            // The removal reaches the watcher on notify's thread, and
            // watching through the other link follows on the blocking pool:
            // a change written meanwhile may still come under the removed
            // link's path, or not at all. Write until it comes under the
            // other one.
            let app = root.join("app.py");
            let gone = root.join(removed);
            let seen = async {
                loop {
                    write(elsewhere.join("ext/deep/x.py"));
                    write(app.clone());
                    let batch = next_batch(&mut watcher).await;
                    let through_the_other =
                        |path: &PathBuf| path.ends_with("deep/x.py") && !path.starts_with(&gone);
                    if batch.iter().any(through_the_other) {
                        break batch;
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            };
            let batch = tokio::time::timeout(DEADLINE, seen).await;
            batch.expect("the linked directory is no longer watched");
        }
    }

    #[test]
    fn a_missing_directory_is_an_error_naming_it() {
        let (_dir, root) = tree();
        let missing = root.join("nowhere");
        let Err(message) = ReloadWatcher::new(&settings(&missing)) else {
            panic!("a missing directory was accepted");
        };
        assert!(message.contains(&*missing.to_string_lossy()), "{message}");
    }

    #[test]
    fn add_patterns_drops_defaults_the_command_line_contradicts() {
        let mut settings = ReloadSettings::default();
        settings.add_patterns(&["*.txt".into(), ".*".into()], &["*.py".into()]);
        assert_eq!(settings.include, ["*.txt", ".*"]);
        assert_eq!(settings.exclude, [".py[cod]", ".sw.*", "~*", "*.py"]);
    }
}
