//! Output files that appear whole or not at all: written to an unnamed temporary file (Linux `O_TMPFILE`) that is
//! linked into place on commit, so even a killed process leaves nothing behind; elsewhere a hidden temporary
//! file renamed at the end and removed if the run fails.

use crate::error::{QuantError, Result};
use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};

/// A file being written that becomes `target` only on [`AtomicFile::commit`].
pub struct AtomicFile {
    file: File,
    target: PathBuf,
    /// The named temporary file, when `O_TMPFILE` was not available.
    named_temp: Option<PathBuf>,
    committed: bool,
}

fn temp_name(target: &Path) -> PathBuf {
    let name = target
        .file_name()
        .map_or_else(|| "output".into(), |n| n.to_string_lossy().into_owned());
    target.with_file_name(format!(".{name}.{}.partial", std::process::id()))
}

/// A read-write file in `dir` that has no name (Linux `O_TMPFILE`): invisible, and gone once closed unless linked
/// into place; `None` where the system or the filesystem offers none.
#[cfg(target_os = "linux")]
pub(crate) fn unnamed_file_in(dir: &Path) -> Option<File> {
    use std::os::unix::fs::OpenOptionsExt;
    OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_TMPFILE)
        .open(dir)
        .ok()
}

/// A read-write file in `dir` that has no name: none off Linux.
#[cfg(not(target_os = "linux"))]
pub(crate) fn unnamed_file_in(_dir: &Path) -> Option<File> {
    None
}

impl AtomicFile {
    /// Starts writing `target` (its folder must exist, and it must not be a folder). Errors name `target`, never
    /// the temporary file.
    pub fn create(target: &Path) -> Result<Self> {
        super::output_path::check_target(target)?;
        let dir = match target.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        if let Some(file) = unnamed_file_in(&dir) {
            return Ok(Self {
                file,
                target: target.to_path_buf(),
                named_temp: None,
                committed: false,
            });
        }
        let temp = temp_name(target);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&temp)
            .map_err(|e| QuantError::io(target, &e))?;
        Ok(Self {
            file,
            target: target.to_path_buf(),
            named_temp: Some(temp),
            committed: false,
        })
    }

    /// A handle to write through (shares the file position).
    pub fn handle(&self) -> Result<File> {
        self.file
            .try_clone()
            .map_err(|e| QuantError::io(&self.target, &e))
    }

    /// Makes the written file visible as the target, replacing any previous file, once its data is on disk.
    pub fn commit(self) -> Result<()> {
        self.file
            .sync_all()
            .map_err(|e| QuantError::io(&self.target, &e))?;
        self.link()
    }

    /// [`AtomicFile::commit`] without waiting for the data to reach the disk: every process still sees the file
    /// whole or not at all (a killed writer leaves nothing), but an operating-system crash may leave it torn. For
    /// intermediate files whose reader rejects a torn file, so that it can be made again (the staged units of a
    /// distributed run: waiting for the disk once per tensor cost that run about 6% of its time).
    pub fn commit_unsynced(self) -> Result<()> {
        self.link()
    }

    fn link(mut self) -> Result<()> {
        let temp = match &self.named_temp {
            Some(t) => t.clone(),
            None => self.link_unnamed()?,
        };
        if let Err(e) = std::fs::rename(&temp, &self.target) {
            // Nothing may remain: the linked name goes too (`Drop` removes a named temporary file).
            if self.named_temp.is_none() {
                let _ = std::fs::remove_file(&temp);
            }
            return Err(QuantError::io(&self.target, &e));
        }
        self.committed = true;
        Ok(())
    }

    #[cfg(target_os = "linux")]
    fn link_unnamed(&self) -> Result<PathBuf> {
        use std::os::unix::ffi::OsStrExt;
        use std::os::unix::io::AsRawFd;
        let temp = temp_name(&self.target);
        let source = format!("/proc/self/fd/{}\0", self.file.as_raw_fd());
        let mut dest = temp.as_os_str().as_bytes().to_vec();
        dest.push(0);
        // SAFETY: both paths are NUL-terminated byte strings that outlive the call.
        let rc = unsafe {
            libc::linkat(
                libc::AT_FDCWD,
                source.as_ptr().cast(),
                libc::AT_FDCWD,
                dest.as_ptr().cast(),
                libc::AT_SYMLINK_FOLLOW,
            )
        };
        if rc != 0 {
            return Err(QuantError::io(
                &self.target,
                &std::io::Error::last_os_error(),
            ));
        }
        Ok(temp)
    }

    #[cfg(not(target_os = "linux"))]
    fn link_unnamed(&self) -> Result<PathBuf> {
        unreachable!("unnamed temporary files are only opened on Linux")
    }
}

impl Drop for AtomicFile {
    fn drop(&mut self) {
        if !self.committed {
            if let Some(temp) = &self.named_temp {
                let _ = std::fs::remove_file(temp);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn appears_only_on_commit() {
        let dir = std::env::temp_dir().join(format!("aq-atomic-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let target = dir.join("out.bin");
        let f = AtomicFile::create(&target).unwrap();
        f.handle().unwrap().write_all(b"hello").unwrap();
        assert!(!target.exists());
        f.commit().unwrap();
        assert_eq!(std::fs::read(&target).unwrap(), b"hello");
        let dropped = AtomicFile::create(&dir.join("never.bin")).unwrap();
        dropped.handle().unwrap().write_all(b"x").unwrap();
        drop(dropped);
        let left: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left, vec![std::ffi::OsString::from("out.bin")]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_failed_rename_leaves_nothing_and_names_the_target() {
        let dir = std::env::temp_dir().join(format!("aq-atomic-rename-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let target = dir.join("late");
        let f = AtomicFile::create(&target).unwrap();
        f.handle().unwrap().write_all(b"hello").unwrap();
        // The target turns into a non-empty folder after the checks: the rename fails at commit.
        std::fs::create_dir_all(target.join("inside")).unwrap();
        let e = f.commit().unwrap_err().to_string();
        assert!(
            e.starts_with(&target.display().to_string()) && !e.contains("partial"),
            "{e}"
        );
        let left: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left, vec![std::ffi::OsString::from("late")]);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
