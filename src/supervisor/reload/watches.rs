//! The kernel side of `--reload`: one inotify watch per wanted directory,
//! and the callback that turns notify's events into notices for the
//! watcher's async side.

use std::collections::{BTreeMap, HashSet};
use std::ops::Bound;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use notify::event::{EventKind, ModifyKind, RenameMode};
use notify::{ErrorKind, Event, RecommendedWatcher, RecursiveMode, Watcher};
use parking_lot::Mutex;
use tokio::sync::mpsc::UnboundedSender;

use super::filter::Filter;

/// What notify's thread passes to the async side.
pub(super) enum Notice {
    /// A wanted file was created, written, renamed or removed.
    Changed(PathBuf),
    /// A directory appeared in a watched tree and needs watches of its own.
    NewDir(PathBuf),
    /// The kernel's event queue overflowed, so changes were lost.
    Lost,
    /// A link through which directories were watched is gone, and their
    /// watches with it: the tree must be walked for another path to them.
    Unlinked,
    /// A walk ran out of inotify watches, why in words: with
    /// `--reload-engine auto`, polling takes over.
    OutOfWatches(String),
}

/// What a directory is, whatever the path to it: device and inode.
pub(super) type DirId = (u64, u64);

/// The directories watched, shared by every walk and by [`on_event`]: each
/// is watched once, by the first path found to it. A second `watch()` of the
/// same directory returns the same inotify watch, which notify then reports
/// under the second path, and drops (for both) once that path is removed:
/// a link made and removed again would leave its target unwatched.
#[derive(Default)]
pub(super) struct Watched {
    ids: HashSet<DirId>,
    /// Each watch by the path it was set through, and whether that path
    /// crosses a link.
    paths: BTreeMap<PathBuf, (DirId, bool)>,
}

impl Watched {
    /// Claims `dir` for a watch; false if it is watched already.
    fn claim(&mut self, id: DirId, dir: &Path, linked: bool) -> bool {
        if !self.ids.insert(id) {
            return false;
        }
        self.paths.insert(dir.to_path_buf(), (id, linked));
        true
    }

    /// Forgets the watches set through `path` or below it, as notify drops
    /// them when that path is removed or moved away, so that a directory made
    /// later with the same inode, or the same directory under another path,
    /// is watched again. True if one of them was set through a link: its
    /// directory may still be there, by another path.
    pub(super) fn release(&mut self, path: &Path) -> bool {
        let below: Vec<PathBuf> = (self.paths)
            .range::<Path, _>((Bound::Included(path), Bound::Unbounded))
            .map(|(dir, _)| dir)
            .take_while(|dir| dir.starts_with(path))
            .cloned()
            .collect();
        let mut linked = false;
        for dir in below {
            if let Some((id, through_link)) = self.paths.remove(&dir) {
                self.ids.remove(&id);
                linked |= through_link;
            }
        }
        linked
    }

    /// Forgets the watches whose path no longer leads to their directory:
    /// after lost events, their removal may not have been seen.
    pub(super) fn prune(watched: &Mutex<Self>) {
        let paths: Vec<(PathBuf, DirId)> = (watched.lock().paths.iter())
            .map(|(dir, (id, _))| (dir.clone(), *id))
            .collect();
        for (dir, id) in paths {
            if identity(&dir) != Some(id) {
                watched.lock().release(&dir);
            }
        }
    }
}

/// Runs on notify's thread for every event. It must neither block nor call
/// into the watcher (whose thread this is), so new directories go to the
/// async side to be watched.
pub(super) fn on_event(
    filter: &Filter,
    watched: &Mutex<Watched>,
    sender: &UnboundedSender<Notice>,
    event: notify::Result<Event>,
) {
    let event = match event {
        Ok(event) => event,
        Err(err) => return warn_watch_error(&err),
    };
    if event.need_rescan() {
        let _ = sender.send(Notice::Lost);
        return;
    }
    let appeared = match event.kind {
        EventKind::Create(_) | EventKind::Modify(ModifyKind::Name(RenameMode::To)) => true,
        EventKind::Modify(_) | EventKind::Remove(_) => false,
        // Opening and reading files (the app importing itself) is no change.
        _ => return,
    };
    let gone = matches!(
        event.kind,
        EventKind::Remove(_) | EventKind::Modify(ModifyKind::Name(RenameMode::From))
    );
    for path in event.paths {
        // Before any walk that the next events may start: a directory
        // removed and made anew can get the same inode.
        if gone && watched.lock().release(&path) {
            let _ = sender.send(Notice::Unlinked);
        }
        if gone && filter.roots.contains(&path) {
            tracing::warn!("--reload: watched directory {} was removed or moved; changes there are no longer seen until rsasgi restarts", path.display());
        }
        // A link to a directory counts as one (watch_tree breaks link loops).
        let is_dir = appeared && path.metadata().is_ok_and(|m| m.is_dir());
        let notice = if is_dir {
            if !filter.watches_dir(&path) {
                continue;
            }
            Notice::NewDir(path)
        } else if filter.wants(&path) {
            Notice::Changed(path)
        } else {
            continue;
        };
        // Fails only once the watcher is dropped: nobody is waiting.
        let _ = sender.send(notice);
    }
}

/// Watches `top` and every directory below it that the filter keeps, one
/// non-recursive watch each: notify's recursive mode would also watch
/// `.git`, `.venv` and `node_modules`, and a big tree runs out of inotify
/// watches. With `found`, collects the wanted files already there.
///
/// Links to directories are followed, as uvicorn's watcher (watchfiles)
/// does: a package linked in from a checkout elsewhere is source too. Each
/// directory is watched once, by the first path found to it (`watched`
/// holds them all): a link to a directory watched already is not followed,
/// so a link back up the tree (`ln -s .. loop`) ends the walk instead of
/// trapping it. A directory watched already is walked through, not watched
/// again, for what is new below it.
///
/// Returns what the inotify watch limit left unwatched, if it was reached:
/// the caller warns, or polls instead.
pub(super) fn watch_tree(
    watcher: &Mutex<RecommendedWatcher>,
    watched: &Mutex<Watched>,
    filter: &Filter,
    top: &Path,
    mut found: Option<&mut Vec<PathBuf>>,
) -> Option<Unwatched> {
    // Breaks loops of real directories walked through (bind mounts).
    let mut visited: HashSet<DirId> = HashSet::new();
    let linked = top.symlink_metadata().is_ok_and(|m| m.is_symlink());
    // Roots are canonical, so a path below one crosses a link if it is not.
    let through_link = std::fs::canonicalize(top).map_or(true, |real| real != top);
    let mut dirs = vec![(top.to_path_buf(), linked, through_link)];
    // Once the watch limit is reached, every further watch would fail the
    // same way: the walk goes on only to count what is left unwatched.
    let mut unwatched: Option<Unwatched> = None;
    while let Some((dir, linked, through_link)) = dirs.pop() {
        // None: gone since it was listed; its removal is an event of its own.
        let Some(id) = identity(&dir) else {
            continue;
        };
        if !visited.insert(id) {
            continue;
        }
        // Not held across watch(), which waits on notify's thread, where
        // on_event may be waiting for this lock.
        let claimed = watched.lock().claim(id, &dir, through_link);
        if !claimed && linked {
            tracing::debug!(
                "--reload: not following the link {}: its directory is watched already",
                dir.display()
            );
            continue;
        }
        if claimed && linked {
            let target = std::fs::canonicalize(&dir).unwrap_or_default();
            tracing::debug!(
                "--reload: following the link {} to {}",
                dir.display(),
                target.display()
            );
        }
        if !claimed {
            // Watched already: walked through for what is new below.
        } else if let Some(unwatched) = &mut unwatched {
            watched.lock().release(&dir);
            unwatched.count += 1;
        } else if let Err(err) = watcher.lock().watch(&dir, RecursiveMode::NonRecursive) {
            watched.lock().release(&dir);
            match err.kind {
                ErrorKind::MaxFilesWatch => {
                    unwatched = Some(Unwatched {
                        top: top.to_path_buf(),
                        first: dir.clone(),
                        count: 1,
                    })
                }
                ErrorKind::PathNotFound => continue,
                _ => warn_watch_error(&err),
            }
        }
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let Ok(kind) = entry.file_type() else {
                continue;
            };
            let link_to_dir = kind.is_symlink() && path.metadata().is_ok_and(|m| m.is_dir());
            if kind.is_dir() || link_to_dir {
                if filter.watches_dir(&path) {
                    dirs.push((path, link_to_dir, through_link || link_to_dir));
                }
            } else if let Some(found) = found.as_deref_mut() {
                if filter.wants(&path) {
                    found.push(path);
                }
            }
        }
    }
    unwatched
}

/// The directories a walk could not watch, once the inotify watch limit
/// was reached: the first of them, and how many.
pub(super) struct Unwatched {
    /// The top of the walk.
    top: PathBuf,
    first: PathBuf,
    count: usize,
}

impl Unwatched {
    /// With `--reload-engine inotify`: the changes there are not seen.
    pub(super) fn warn(&self) {
        tracing::warn!(
            "--reload: {}, where changes are not seen; raise the limit (sysctl \
             fs.inotify.max_user_watches=524288) or narrow --reload-dir / --reload-exclude",
            self.what()
        );
    }

    /// Why `--reload-engine auto` polls instead.
    pub(super) fn why(&self) -> String {
        format!(
            "{} (raise the limit: sysctl fs.inotify.max_user_watches=524288)",
            self.what()
        )
    }

    fn what(&self) -> String {
        let directories = if self.count == 1 {
            "directory"
        } else {
            "directories"
        };
        format!(
            "the inotify watch limit (fs.inotify.max_user_watches) is reached: watching \
             stopped at {}, leaving {} {directories} under {} unwatched",
            self.first.display(),
            self.count,
            self.top.display()
        )
    }
}

pub(super) fn identity(dir: &Path) -> Option<DirId> {
    std::fs::metadata(dir).ok().map(|m| (m.dev(), m.ino()))
}

fn warn_watch_error(err: &notify::Error) {
    tracing::warn!("--reload: file watcher: {err}");
}
