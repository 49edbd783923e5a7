//! Writing a checkpoint directory atomically: everything goes into a scratch directory beside
//! the output, which is renamed into place only when complete, so a failure or an interrupt
//! never leaves a half-written checkpoint at the output path. Ctrl-C removes the scratch
//! directories too (destructors do not run when a signal ends the process).

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, Once};

use anyhow::{bail, Context, Result};
use candle_core::Tensor;

/// Fails early when `out` may not be (re)written.
pub fn check_output(out: &Path, force: bool) -> Result<()> {
    if !out.exists() {
        return Ok(());
    }
    if !force {
        bail!(
            "{} already exists (pass --force to replace it)",
            out.display()
        );
    }
    if !out.is_dir() {
        bail!("{} exists and is not a directory", out.display());
    }
    Ok(())
}

/// Scratch directories in use, for the Ctrl-C handler.
static ACTIVE: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

fn remove_on_interrupt(dir: &Path) {
    static HANDLER: Once = Once::new();
    HANDLER.call_once(|| {
        // Without a handler, Ctrl-C ends the process with its default action; failing to
        // install one only means a stale scratch directory may be left, which is harmless.
        let _ = ctrlc::set_handler(|| {
            if let Ok(dirs) = ACTIVE.lock() {
                for d in dirs.iter() {
                    let _ = fs::remove_dir_all(d);
                }
            }
            eprintln!("interrupted: nothing was written");
            std::process::exit(130);
        });
    });
    if let Ok(mut dirs) = ACTIVE.lock() {
        dirs.push(dir.to_path_buf());
    }
}

fn forget(dir: &Path) {
    if let Ok(mut dirs) = ACTIVE.lock() {
        dirs.retain(|d| d != dir);
    }
}

/// A scratch directory beside the output, removed unless committed.
pub struct Staging {
    dir: PathBuf,
    committed: bool,
}

impl Staging {
    pub fn beside(out: &Path) -> Result<Self> {
        Self::scratch(out, "tmp")
    }

    /// An empty directory `.{name}.{tag}-{pid}` beside `out` for working files, removed when
    /// dropped (and on Ctrl-C).
    pub fn scratch(out: &Path, tag: &str) -> Result<Self> {
        let dir = sibling(out, tag)?;
        if let Some(parent) = dir.parent() {
            fs::create_dir_all(parent)
                .with_context(|| format!("cannot create {}", parent.display()))?;
        }
        if dir.exists() {
            fs::remove_dir_all(&dir)
                .with_context(|| format!("cannot remove the stale {}", dir.display()))?;
        }
        fs::create_dir(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
        remove_on_interrupt(&dir);
        Ok(Self {
            dir,
            committed: false,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Moves the finished directory to `out`, replacing an existing one when `force`.
    pub fn commit(mut self, out: &Path, force: bool) -> Result<()> {
        publish_permissions(&self.dir)?;
        if out.exists() {
            if !force {
                bail!(
                    "{} appeared while it was being written (pass --force to replace it)",
                    out.display()
                );
            }
            let old = sibling(out, "old")?;
            fs::rename(out, &old)
                .with_context(|| format!("cannot move the old {} aside", out.display()))?;
            if let Err(e) = fs::rename(&self.dir, out) {
                // Put the previous output back rather than leave none.
                let _ = fs::rename(&old, out);
                return Err(e)
                    .with_context(|| format!("cannot move the result to {}", out.display()));
            }
            fs::remove_dir_all(&old)
                .with_context(|| format!("cannot remove the old output {}", old.display()))?;
        } else {
            fs::rename(&self.dir, out)
                .with_context(|| format!("cannot move the result to {}", out.display()))?;
        }
        self.committed = true;
        Ok(())
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        forget(&self.dir);
        if !self.committed {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

/// `.{name}.{tag}-{pid}` in the directory of `out`: same file system, so renames are atomic.
fn sibling(out: &Path, tag: &str) -> Result<PathBuf> {
    let name = out
        .file_name()
        .with_context(|| format!("{} does not name a directory", out.display()))?;
    let hidden = format!(".{}.{tag}-{}", name.to_string_lossy(), std::process::id());
    Ok(out.with_file_name(hidden))
}

/// Files readable by everyone, as a checkpoint directory should be: the safetensors crate
/// creates its files 0600, and copies keep the source's mode (read-only in a shared directory).
fn publish_permissions(dir: &Path) -> Result<()> {
    #[cfg(unix)]
    for entry in fs::read_dir(dir)? {
        use std::os::unix::fs::PermissionsExt;
        let path = entry?.path();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644))
            .with_context(|| format!("cannot set the permissions of {}", path.display()))?;
    }
    Ok(())
}

/// Pretty JSON written to `path.tmp` and renamed, so a reader never sees half a file.
pub fn write_json(path: &Path, value: &impl serde::Serialize) -> Result<()> {
    let text = serde_json::to_string_pretty(value).context("cannot serialize JSON")?;
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    fs::write(&tmp, text + "\n").with_context(|| format!("cannot write {}", tmp.display()))?;
    fs::rename(&tmp, path)
        .with_context(|| format!("cannot rename {} to {}", tmp.display(), path.display()))
}

/// A safetensors file with the metadata transformers' save_pretrained writes (format=pt):
/// transformers refuses files without it.
pub fn write_safetensors<'a>(
    path: &Path,
    tensors: impl IntoIterator<Item = (&'a str, &'a Tensor)>,
) -> Result<()> {
    let metadata = HashMap::from([("format".to_string(), "pt".to_string())]);
    safetensors::serialize_to_file(tensors, Some(metadata), path)
        .with_context(|| format!("cannot write {}", path.display()))
}
