//! SIGINT and SIGTERM (Ctrl-C, `timeout`, Slurm, `docker stop`): the scratch files of the run
//! are removed and the process exits 130 or 143, with either the previous output or the new,
//! complete one in place, never part of one.
//!
//! A thread of our own receives the signal, so the cleanup is ordinary code. It marks the run
//! as interrupted before it removes anything: work that then fails on a vanished scratch file
//! (see [`settle`]) waits for the exit instead of reporting that failure. Publishing a result
//! (the renames of [`crate::io::staging::Staging::commit`]) holds the registry's lock, which
//! the cleanup also takes, so a signal lands before the renames or after them.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Mutex, MutexGuard};

/// Scratch paths (directories or files) of the running process, removed on a signal.
static SCRATCH: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

/// The output published by this process, if any: a signal after that ends the process with
/// the output complete, and says so.
static PUBLISHED: Mutex<Option<PathBuf>> = Mutex::new(None);

/// The signal being handled, 0 before one arrives.
static RECEIVED: AtomicI32 = AtomicI32::new(0);

/// Starts the thread that handles SIGINT and SIGTERM; called first thing by the binary.
pub fn install() {
    #[cfg(unix)]
    {
        use signal_hook::consts::{SIGINT, SIGTERM};
        // Without the thread a signal ends the process by its default action: scratch files
        // may remain, and the next run removes them (staging::clean_stale).
        let Ok(mut signals) = signal_hook::iterator::Signals::new([SIGINT, SIGTERM]) else {
            return;
        };
        let spawned = std::thread::Builder::new()
            .name("signals".into())
            .spawn(move || {
                if let Some(signal) = signals.forever().next() {
                    clean_up_and_exit(signal);
                }
            });
        drop(spawned);
    }
}

fn clean_up_and_exit(signal: i32) -> ! {
    RECEIVED.store(signal, Ordering::SeqCst);
    let scratch = lock();
    for path in scratch.iter() {
        remove(path);
    }
    let name = if signal == 15 { "SIGTERM" } else { "SIGINT" };
    let published = PUBLISHED.lock().ok().and_then(|p| p.clone());
    let outcome = match published {
        Some(out) => format!("{} had been written in full", out.display()),
        None => "removed the partial output, nothing was written".to_string(),
    };
    // stderr may be gone too; the exit must happen all the same.
    let _ = writeln!(std::io::stderr(), "interrupted by {name}: {outcome}");
    std::process::exit(128 + signal);
}

/// Moves `path` aside before deleting it, so that files the still-running work creates under
/// the old name fail instead of landing in a directory being emptied.
fn remove(path: &Path) {
    let mut doomed = path.as_os_str().to_owned();
    doomed.push(".removing");
    let doomed = PathBuf::from(doomed);
    let target = if fs::rename(path, &doomed).is_ok() {
        doomed
    } else {
        path.to_path_buf()
    };
    if target.is_dir() {
        let _ = fs::remove_dir_all(&target);
    } else {
        let _ = fs::remove_file(&target);
    }
}

fn lock() -> MutexGuard<'static, Vec<PathBuf>> {
    SCRATCH
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The scratch registry held: no signal is handled until it is dropped.
pub struct Hold(MutexGuard<'static, Vec<PathBuf>>);

impl Hold {
    /// Removes `path` on a signal from now on. Created while held, a scratch path is
    /// registered before any signal can find it unregistered.
    pub fn track(&mut self, path: &Path) {
        self.0.push(path.to_path_buf());
    }

    /// Stops removing `path` on a signal.
    pub fn untrack(&mut self, path: &Path) {
        self.0.retain(|p| p != path);
    }

    /// Records that `out` now holds this run's complete result.
    pub fn published(&mut self, out: &Path) {
        if let Ok(mut published) = PUBLISHED.lock() {
            *published = Some(out.to_path_buf());
        }
    }
}

/// Holds off signal handling while scratch paths are created or removed and while a result
/// is published (see the module docs).
pub fn hold() -> Hold {
    Hold(lock())
}

/// Stops removing `path` on a signal.
pub fn untrack(path: &Path) {
    hold().untrack(path);
}

/// When a signal is being handled, waits for its handler to end the process: the work's own
/// outcome (often an error about a scratch file the handler removed) is not the news.
pub fn settle() {
    if RECEIVED.load(Ordering::SeqCst) != 0 {
        loop {
            std::thread::park();
        }
    }
}
