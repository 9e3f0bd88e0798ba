//! `--pid FILE`: the main process's pid, for init scripts and `kill -HUP $(cat FILE)`.

use std::io::Write;
use std::path::{Path, PathBuf};

/// A pid file this process wrote; removed when dropped, unless another
/// process has written its own pid there since.
#[derive(Debug)]
pub(crate) struct PidFile {
    path: PathBuf,
    pid: u32,
}

impl PidFile {
    pub(crate) fn write(path: &Path) -> Result<PidFile, String> {
        let pid = std::process::id();
        let shown = path.display();
        let mut file = std::fs::File::create(path)
            .map_err(|err| format!("Cannot write --pid {shown}: {err}"))?;
        writeln!(file, "{pid}").map_err(|err| format!("Cannot write --pid {shown}: {err}"))?;
        Ok(PidFile {
            path: path.to_path_buf(),
            pid,
        })
    }
}

impl Drop for PidFile {
    fn drop(&mut self) {
        let ours = std::fs::read_to_string(&self.path)
            .is_ok_and(|content| content.trim() == self.pid.to_string());
        if ours {
            if let Err(err) = std::fs::remove_file(&self.path) {
                // In one process with --user, the rights to the directory
                // went with root's; a supervisor keeps them.
                tracing::warn!(
                    "Could not remove --pid {}: {err}; remove it by hand (with --user, run with \
                     --workers, whose supervisor keeps root's rights, or keep the file in a \
                     directory that user may write)",
                    self.path.display()
                );
            }
        }
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
        let err = PidFile::write(&dir.path().join("missing/rsasgi.pid")).unwrap_err();
        assert!(err.starts_with("Cannot write --pid "), "{err}");
    }
}
