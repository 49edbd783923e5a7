//! Writing a checkpoint directory atomically: everything goes into a scratch directory beside
//! the output, which is renamed into place only when complete, so a failure or an interrupt
//! never leaves a half-written checkpoint at the output path. On SIGINT/SIGTERM the scratch
//! directories are removed by [`super::interrupt`]; those of a run that was killed outright are
//! recognised by the next run (their names carry the dead process's id) and removed then.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use candle_core::Tensor;

use super::interrupt;

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

/// A scratch directory beside the output, removed unless committed.
pub struct Staging {
    dir: PathBuf,
    committed: bool,
}

impl Staging {
    pub fn beside(out: &Path) -> Result<Self> {
        Self::scratch(out, "tmp")
    }

    /// An empty directory `.{name}.{tag}-{pid}@{host}` beside `out` for working files, removed
    /// when dropped (and on SIGINT/SIGTERM).
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
        let mut hold = interrupt::hold();
        fs::create_dir(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
        hold.track(&dir);
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
        let old = sibling(out, "old")?;
        let had_old = {
            // A signal waits until the output is either the old one or the new one.
            let mut hold = interrupt::hold();
            let had_old = self.publish(out, &old, force)?;
            hold.untrack(&self.dir);
            hold.published(out);
            if had_old {
                hold.track(&old);
            }
            self.committed = true;
            had_old
        };
        if had_old {
            let removed = fs::remove_dir_all(&old);
            interrupt::untrack(&old);
            removed.with_context(|| format!("cannot remove the old output {}", old.display()))?;
        }
        Ok(())
    }

    /// The renames of [`Self::commit`]; whether an old output was moved aside to `old`.
    fn publish(&self, out: &Path, old: &Path, force: bool) -> Result<bool> {
        if !out.exists() {
            fs::rename(&self.dir, out)
                .with_context(|| format!("cannot move the result to {}", out.display()))?;
            return Ok(false);
        }
        if !force {
            bail!(
                "{} appeared while it was being written (pass --force to replace it)",
                out.display()
            );
        }
        fs::rename(out, old)
            .with_context(|| format!("cannot move the old {} aside", out.display()))?;
        if let Err(e) = fs::rename(&self.dir, out) {
            // Put the previous output back rather than leave none.
            let _ = fs::rename(old, out);
            return Err(e).with_context(|| format!("cannot move the result to {}", out.display()));
        }
        Ok(true)
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        let mut hold = interrupt::hold();
        if !self.committed {
            let _ = fs::remove_dir_all(&self.dir);
        }
        hold.untrack(&self.dir);
    }
}

/// `.{name}.{tag}-{pid}@{host}` in the directory of `out`: same file system, so renames are
/// atomic; the process id and host tell a later run whether its owner still lives.
fn sibling(out: &Path, tag: &str) -> Result<PathBuf> {
    let name = out
        .file_name()
        .with_context(|| format!("{} does not name a directory", out.display()))?;
    let hidden = format!(
        ".{}.{tag}-{}@{}",
        name.to_string_lossy(),
        std::process::id(),
        hostname()
    );
    Ok(out.with_file_name(hidden))
}

/// Removes the scratch directories beside `out` whose run is gone (killed by SIGKILL, or the
/// machine went down); an old output moved aside by a run that died before putting the new
/// one in place is put back. Returns one line per thing done, for the log.
pub fn clean_stale(out: &Path) -> Result<Vec<String>> {
    let (Some(dir), Some(name)) = (out.parent(), out.file_name()) else {
        return Ok(Vec::new());
    };
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    let Ok(entries) = fs::read_dir(dir) else {
        return Ok(Vec::new());
    };
    let prefix = format!(".{}.", name.to_string_lossy());
    let host = hostname();
    let mut done = Vec::new();
    for entry in entries.flatten() {
        let file_name = entry.file_name().to_string_lossy().into_owned();
        let Some((tag, pid, owner_host)) =
            file_name.strip_prefix(&prefix).and_then(parse_scratch_name)
        else {
            continue;
        };
        if owner_host != host || process_alive(pid) {
            continue;
        }
        let path = entry.path();
        if tag == "old" && !out.exists() {
            fs::rename(&path, out).with_context(|| format!("cannot restore {}", out.display()))?;
            done.push(format!(
                "restored {} from {} (a run was killed while replacing it)",
                out.display(),
                path.display()
            ));
            continue;
        }
        fs::remove_dir_all(&path)
            .with_context(|| format!("cannot remove the stale {}", path.display()))?;
        done.push(format!(
            "removed {}, left by process {pid}, which is gone",
            path.display()
        ));
    }
    Ok(done)
}

/// `{tag}-{pid}@{host}` of a scratch directory's name.
fn parse_scratch_name(rest: &str) -> Option<(&str, u32, &str)> {
    let (tag, owner) = rest.split_once('-')?;
    let (pid, host) = owner.split_once('@')?;
    matches!(tag, "tmp" | "inputs" | "old").then_some(())?;
    Some((tag, pid.parse().ok()?, host))
}

fn process_alive(pid: u32) -> bool {
    #[cfg(unix)]
    {
        let Ok(pid) = libc::pid_t::try_from(pid) else {
            return false;
        };
        // SAFETY: signal 0 only checks that the process exists and may be signalled.
        let status = unsafe { libc::kill(pid, 0) };
        status == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
    }
    #[cfg(not(unix))]
    {
        let _ = pid;
        true
    }
}

fn hostname() -> String {
    #[cfg(unix)]
    {
        let mut buf = [0u8; 256];
        // SAFETY: gethostname writes at most `buf.len()` bytes into `buf`.
        if unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) } == 0 {
            let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
            return String::from_utf8_lossy(&buf[..end]).into_owned();
        }
    }
    "localhost".to_string()
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
    // Held throughout (a few milliseconds), so a signal finds either no file or the whole one.
    let _hold = interrupt::hold();
    let written = fs::write(&tmp, text + "\n")
        .with_context(|| format!("cannot write {}", tmp.display()))
        .and_then(|()| {
            fs::rename(&tmp, path)
                .with_context(|| format!("cannot rename {} to {}", tmp.display(), path.display()))
        });
    if written.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    written
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
