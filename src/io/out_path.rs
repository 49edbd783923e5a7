//! Where a run may write: an output must never be an input, lie inside one, or hold one, since
//! replacing it (`--force`) would delete what the run reads. Paths are compared after
//! symlinks and `..` are resolved, so no spelling of the input gets past.

use std::path::{Component, Path, PathBuf};

use anyhow::{bail, Context, Result};

/// What kind of thing a flag writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Written {
    /// A directory, replaced as a whole with `--force` (--out).
    Dir,
    /// One file (--json, --log-file).
    File,
}

/// `path` absolute, with the symlinks of its existing part resolved and the missing rest
/// applied lexically (that is how the directories will be created).
pub fn resolved(path: &Path) -> Result<PathBuf> {
    let abs = if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir()
            .context("cannot read the current directory")?
            .join(path)
    };
    let parts: Vec<Component> = abs.components().collect();
    for n in (0..=parts.len()).rev() {
        let prefix: PathBuf = parts[..n].iter().collect();
        let Ok(mut base) = prefix.canonicalize() else {
            continue;
        };
        for part in &parts[n..] {
            match part {
                Component::ParentDir => {
                    base.pop();
                }
                Component::Normal(name) => base.push(name),
                _ => {}
            }
        }
        return Ok(base);
    }
    Ok(abs)
}

/// Refuses `out` (given as `flag`) when writing it could change one of `inputs` (files or
/// directories): a directory output may not be an input, lie inside one or hold one; a file
/// output may not be an input.
pub fn check_apart(flag: &str, out: &Path, kind: Written, inputs: &[PathBuf]) -> Result<()> {
    let target = resolved(out)?;
    for input in inputs {
        let input_r = resolved(input)?;
        let shown = input.display();
        if target == input_r {
            bail!(
                "{flag} {} is the input {shown}: refusing to overwrite it",
                out.display()
            );
        }
        if kind == Written::File {
            continue;
        }
        if input_r.starts_with(&target) {
            bail!(
                "{flag} {} holds the input {shown}: refusing to replace it",
                out.display()
            );
        }
        if input_r.is_dir() && target.starts_with(&input_r) {
            bail!(
                "{flag} {} is inside the input {shown}: write it elsewhere",
                out.display()
            );
        }
    }
    Ok(())
}

/// An output directory `flag` `out`: apart from `inputs`, writable, and new unless `force`.
pub fn check_output_dir(flag: &str, out: &Path, force: bool, inputs: &[PathBuf]) -> Result<()> {
    check_apart(flag, out, Written::Dir, inputs)?;
    super::staging::check_output(out, force).map_err(|e| anyhow::anyhow!("{flag} {e}"))?;
    check_writable(flag, out, Written::Dir)
}

/// An output file `flag` `path` (a report, a log): not an input, and writable.
pub fn check_output_file(flag: &str, path: &Path, inputs: &[PathBuf]) -> Result<()> {
    check_apart(flag, path, Written::File, inputs)?;
    check_writable(flag, path, Written::File)
}

/// Fails now, rather than after the work, when `path` (given as `flag`) cannot be created:
/// its nearest existing ancestor must be a writable directory, and `path` itself, if it
/// exists, must be of the kind written.
pub fn check_writable(flag: &str, path: &Path, kind: Written) -> Result<()> {
    if kind == Written::File {
        if path.is_dir() {
            bail!("{flag} {} is a directory", path.display());
        }
        // Reports and logs go into an existing directory; only --out makes its parents.
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            if !dir.is_dir() {
                bail!("{flag} {}: no directory {}", path.display(), dir.display());
            }
        }
    }
    let mut ancestor = path.parent();
    while let Some(dir) = ancestor.filter(|d| !d.as_os_str().is_empty()) {
        if dir.exists() {
            if !dir.is_dir() {
                bail!(
                    "{flag} {}: {} is not a directory",
                    path.display(),
                    dir.display()
                );
            }
            return check_access(flag, path, dir);
        }
        ancestor = dir.parent();
    }
    check_access(flag, path, Path::new("."))
}

fn check_access(flag: &str, path: &Path, dir: &Path) -> Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::ffi::OsStrExt;
        let c_dir = std::ffi::CString::new(dir.as_os_str().as_bytes())
            .with_context(|| format!("{flag} {}: bad path", path.display()))?;
        // SAFETY: `c_dir` is a NUL-terminated path that outlives the call.
        if unsafe { libc::access(c_dir.as_ptr(), libc::W_OK | libc::X_OK) } != 0 {
            let err = std::io::Error::last_os_error();
            bail!(
                "{flag} {}: cannot write in {} ({err})",
                path.display(),
                dir.display()
            );
        }
    }
    #[cfg(not(unix))]
    let _ = (flag, path, dir);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_missing_parts_lexically() {
        let tmp = std::env::temp_dir().canonicalize().unwrap();
        let p = tmp.join("grasp-no-such-dir/../x");
        assert_eq!(resolved(&p).unwrap(), tmp.join("x"));
    }

    #[test]
    fn refuses_outputs_that_touch_the_input() {
        let tmp = std::env::temp_dir().join(format!("grasp-out-path-{}", std::process::id()));
        let model = tmp.join("model");
        std::fs::create_dir_all(&model).unwrap();
        let inputs = [model.clone()];
        for out in [model.clone(), tmp.clone(), model.join("sub")] {
            assert!(check_apart("--out", &out, Written::Dir, &inputs).is_err());
        }
        assert!(check_apart("--out", &tmp.join("other"), Written::Dir, &inputs).is_ok());
        assert!(check_apart("--json", &model.join("r.json"), Written::File, &inputs).is_ok());
        std::fs::remove_dir_all(&tmp).unwrap();
    }
}
