//! The kernel side of `--reload`: one inotify watch per wanted directory,
//! and the callback that turns notify's events into notices for the
//! watcher's async side.

use std::collections::HashSet;
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
}

/// Runs on notify's thread for every event. It must neither block nor call
/// into the watcher (whose thread this is), so new directories go to the
/// async side to be watched.
pub(super) fn on_event(
    filter: &Filter,
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
/// directory is watched once, by the first path found to it, so a link
/// back up the tree (`ln -s .. loop`) ends the walk instead of trapping it.
pub(super) fn watch_tree(
    watcher: &Mutex<RecommendedWatcher>,
    filter: &Filter,
    top: &Path,
    mut found: Option<&mut Vec<PathBuf>>,
) {
    // A walk from a directory made at runtime starts below the root: the
    // directories above it are watched already, and a link to one of them
    // is a loop too.
    let mut visited: HashSet<(u64, u64)> = (top.ancestors().skip(1))
        .take_while(|dir| filter.roots.iter().any(|root| dir.starts_with(root)))
        .filter_map(identity)
        .collect();
    let linked = top.symlink_metadata().is_ok_and(|m| m.is_symlink());
    let mut dirs = vec![(top.to_path_buf(), linked)];
    // Once the watch limit is reached, every further watch would fail the
    // same way: the walk goes on only to count what is left unwatched.
    let mut unwatched: Option<Unwatched> = None;
    while let Some((dir, linked)) = dirs.pop() {
        // None: gone since it was listed; its removal is an event of its own.
        let Some(id) = identity(&dir) else {
            continue;
        };
        if !visited.insert(id) {
            if linked {
                tracing::debug!(
                    "--reload: not following the link {}: its directory is watched already",
                    dir.display()
                );
            }
            continue;
        }
        if linked {
            let target = std::fs::canonicalize(&dir).unwrap_or_default();
            tracing::debug!(
                "--reload: following the link {} to {}",
                dir.display(),
                target.display()
            );
        }
        if let Some(unwatched) = &mut unwatched {
            unwatched.count += 1;
        } else if let Err(err) = watcher.lock().watch(&dir, RecursiveMode::NonRecursive) {
            match err.kind {
                ErrorKind::MaxFilesWatch => {
                    unwatched = Some(Unwatched {
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
                    dirs.push((path, link_to_dir));
                }
            } else if let Some(found) = found.as_deref_mut() {
                if filter.wants(&path) {
                    found.push(path);
                }
            }
        }
    }
    if let Some(Unwatched { first, count }) = unwatched {
        let directories = if count == 1 {
            "directory"
        } else {
            "directories"
        };
        tracing::warn!(
            "--reload: the inotify watch limit (fs.inotify.max_user_watches) is reached: \
             watching stopped at {}, leaving {count} {directories} under {} unwatched, where \
             changes are not seen; raise the limit (sysctl fs.inotify.max_user_watches=524288) \
             or narrow --reload-dir / --reload-exclude",
            first.display(),
            top.display()
        );
    }
}

/// The directories a walk could not watch, once the inotify watch limit
/// was reached: the first of them, and how many.
struct Unwatched {
    first: PathBuf,
    count: usize,
}

/// What a directory is, whatever the path to it: device and inode.
fn identity(dir: &Path) -> Option<(u64, u64)> {
    std::fs::metadata(dir).ok().map(|m| (m.dev(), m.ino()))
}

fn warn_watch_error(err: &notify::Error) {
    tracing::warn!("--reload: file watcher: {err}");
}
