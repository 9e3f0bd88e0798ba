//! `--pid FILE`: the main process's pid, for init scripts and `kill -HUP $(cat FILE)`.

use std::io::{ErrorKind, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// A pid file this process wrote; removed when dropped, unless another
/// process has written its own pid there since.
#[derive(Debug)]
pub(crate) struct PidFile {
    path: PathBuf,
    pid: u32,
    /// The file written, as (device, inode): another process writing its
    /// pid there renames a file of its own over it.
    written: Written,
}

type Written = (u64, u64);

/// The file this process wrote last, for [`remove_ours`], which runs where
/// the [`PidFile`] is out of reach (a process leaving at once).
static LAST_WRITTEN: std::sync::Mutex<Option<Written>> = std::sync::Mutex::new(None);

impl PidFile {
    /// Writes this process's pid to `path`, unless the file names another
    /// rsasgi that still runs: as gunicorn does, a second instance started
    /// by mistake refuses, rather than hide the first from `kill $(cat FILE)`.
    /// A pid file left by a process that is gone (or whose pid another
    /// program has since) is stale, and replaced.
    pub(crate) fn write(path: &Path) -> Result<PidFile, String> {
        let pid = std::process::id();
        let shown = path.display();
        if let Some(running) = std::fs::read_to_string(path)
            .ok()
            .and_then(|content| content.trim().parse::<u32>().ok())
            .filter(|&other| other != pid && is_rsasgi(other))
        {
            return Err(format!(
                "Cannot write --pid {shown}: rsasgi is already running as pid {running}; stop \
                 it first (or remove the file if that process is not the server it names)"
            ));
        }
        // Written whole under another name, then renamed over the path: a
        // reader never sees an empty or half-written file. The pid file
        // usually sits in a directory others may write (/run, /tmp, the
        // app's own), and the server may run as root: the temporary name is
        // unpredictable and created exclusively without following a link,
        // so that nothing planted there can turn this write into one on
        // another file. rename() replaces a link at the path itself, never
        // its target.
        let mut partial = path.as_os_str().to_owned();
        partial.push(format!(".{pid}.{:016x}.partial", rand::random::<u64>()));
        let partial = PathBuf::from(partial);
        let written = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&partial)
            .and_then(|mut file| {
                let written = writeln!(file, "{pid}")
                    .and_then(|()| file.metadata())
                    .and_then(|meta| {
                        std::fs::rename(&partial, path)?;
                        Ok((meta.dev(), meta.ino()))
                    });
                if written.is_err() {
                    let _ = std::fs::remove_file(&partial);
                }
                written
            });
        match written {
            Ok(written) => {
                *LAST_WRITTEN
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(written);
                Ok(PidFile {
                    path: path.to_path_buf(),
                    pid,
                    written,
                })
            }
            Err(err) => Err(format!("Cannot write --pid {shown}: {err}")),
        }
    }
}

/// Whether process `pid` runs and is an rsasgi (its command line names it:
/// `rsasgi ...` or `python -m rsasgi ...`).
fn is_rsasgi(pid: u32) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|cmdline| {
        cmdline
            .split(|&b| b == 0)
            .any(|arg| arg == b"rsasgi" || arg.ends_with(b"/rsasgi"))
    })
}

/// Removes the pid file at `path` if it names this process: for a process
/// that must leave at once, without dropping its [`PidFile`].
pub(crate) fn remove_ours(path: &Path) {
    let written = *LAST_WRITTEN
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    remove_if_names(path, std::process::id(), written);
}

/// Removes the pid file at `path` if it names `pid`, or, when it cannot be
/// read, if it is still the file `written`.
fn remove_if_names(path: &Path, pid: u32, written: Option<Written>) {
    let shown = path.display();
    const WHY: &str = "with --user, one process gives up root's rights before it exits: run \
                       with --workers, whose supervisor keeps them, or keep the file in a \
                       directory that user owns";
    let ours = match std::fs::read_to_string(path) {
        Ok(content) => content.trim() == pid.to_string(),
        // Written by root, with a umask that lets no one else read it, by
        // a process now running as --user: still ours if it is the file we
        // wrote (a process writing its own pid renames a new file there).
        Err(err) if err.kind() == ErrorKind::PermissionDenied => match written {
            Some(written) => match std::fs::symlink_metadata(path) {
                Ok(meta) => (meta.dev(), meta.ino()) == written,
                Err(err) if err.kind() == ErrorKind::PermissionDenied => {
                    tracing::warn!(
                        "Could not remove --pid {shown}: cannot look into its directory \
                         ({err}); it stays, remove it by hand ({WHY})"
                    );
                    false
                }
                Err(_) => false,
            },
            None => {
                tracing::warn!(
                    "Could not remove --pid {shown}: cannot read it to see that it still names \
                     this process ({err}); it stays, remove it by hand ({WHY})"
                );
                false
            }
        },
        Err(_) => false,
    };
    if ours {
        if let Err(err) = std::fs::remove_file(path) {
            tracing::warn!(
                "Could not remove --pid {shown}: {err}; it stays, remove it by hand ({WHY})"
            );
        }
    }
}

impl Drop for PidFile {
    fn drop(&mut self) {
        remove_if_names(&self.path, self.pid, Some(self.written));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_then_removed_unless_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rsasgi.pid");
        let pid_file = PidFile::write(&path).unwrap();
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            format!("{}\n", std::process::id())
        );
        drop(pid_file);
        assert!(!path.exists());

        let pid_file = PidFile::write(&path).unwrap();
        std::fs::write(&path, "1\n").unwrap();
        drop(pid_file);
        assert!(path.exists(), "another process's pid file is left alone");
        // Pid 1 is no rsasgi: a stale file, replaced.
        drop(PidFile::write(&path).unwrap());
        let err = PidFile::write(&dir.path().join("missing/rsasgi.pid")).unwrap_err();
        assert!(err.starts_with("Cannot write --pid "), "{err}");
    }

    #[test]
    fn never_written_through_a_planted_link() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        std::fs::write(&victim, "precious\n").unwrap();
        let path = dir.path().join("rsasgi.pid");
        // Where an earlier version wrote the pid first, and the pid file itself.
        std::os::unix::fs::symlink(&victim, dir.path().join("rsasgi.pid.partial")).unwrap();
        std::os::unix::fs::symlink(&victim, &path).unwrap();

        let pid_file = PidFile::write(&path).unwrap();
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious\n");
        assert!(!path.symlink_metadata().unwrap().is_symlink());
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            format!("{}\n", std::process::id())
        );
        drop(pid_file);
        let left: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|entry| entry.unwrap().file_name())
            .collect();
        assert_eq!(left.len(), 2, "{left:?}"); // the victim and the planted link
    }
}
