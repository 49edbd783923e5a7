//! Progress on stderr: a bar on a terminal; when stderr is not one (a log file, CI, a pipe), a
//! plain line when a stage starts and then every few seconds, so that a long run is not silent.

use std::io::IsTerminal;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle, TermLike};

/// How often a progress line is logged when stderr is not a terminal.
const LOG_EVERY: Duration = Duration::from_secs(10);

/// A bar of `len` steps counted in `unit`, labelled `prefix`.
pub fn bar(len: u64, prefix: &str, unit: &str) -> ProgressBar {
    let template = if std::io::stderr().is_terminal() {
        format!(
            "{{prefix:>24}} [{{bar:30}}] {{pos}}/{{len}} {unit} {{elapsed_precise}} (eta {{eta}}) \
             {{msg}}"
        )
    } else {
        format!("{{prefix}}: {{pos}}/{{len}} {unit} after {{elapsed}} (eta {{eta}}) {{msg}}")
    };
    let style = ProgressStyle::with_template(&template)
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .with_key("eta", steady_eta)
        .progress_chars("=> ");
    on_stderr(
        ProgressBar::new(len)
            .with_style(style)
            .with_prefix(prefix.to_string()),
    )
}

/// The time left at the bar's average pace so far. indicatif's own estimate weighs the last
/// 15 seconds, so between steps that take longer (a recovery step, a 7B gradient pass) it decays
/// towards zero speed and shows hours.
fn steady_eta(state: &indicatif::ProgressState, w: &mut dyn std::fmt::Write) {
    let (pos, len) = (state.pos(), state.len().unwrap_or(0));
    let text = if pos == 0 || len < pos {
        "?".to_string()
    } else {
        let left = state.elapsed().as_secs_f64() * (len - pos) as f64 / pos as f64;
        format!(
            "{:#}",
            indicatif::HumanDuration(Duration::from_secs_f64(left))
        )
    };
    let _ = w.write_str(&text);
}

/// A spinner for work without a count.
pub fn spinner(message: String) -> ProgressBar {
    let mut bar = ProgressBar::new_spinner().with_message(message);
    if !std::io::stderr().is_terminal() {
        bar = bar.with_style(ProgressStyle::with_template("{msg}").expect("a valid template"));
    }
    let bar = on_stderr(bar);
    bar.enable_steady_tick(Duration::from_millis(120));
    bar
}

/// `bar` drawn on stderr when it is a terminal, logged as plain lines otherwise.
fn on_stderr(bar: ProgressBar) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        bar.set_draw_target(ProgressDrawTarget::term_like(Box::<LogLines>::default()));
    }
    bar
}

/// A "terminal" that turns the bar's redraws into log lines: the first, then at most one per
/// [`LOG_EVERY`]. Cursor moves and clearing, which only matter on a screen, are dropped.
#[derive(Debug, Default)]
struct LogLines(Mutex<LogState>);

#[derive(Debug, Default)]
struct LogState {
    /// What the current redraw has written so far.
    pending: String,
    last_logged: Option<Instant>,
}

impl TermLike for LogLines {
    fn width(&self) -> u16 {
        // Wide enough that no progress line wraps; the padding it implies is trimmed.
        240
    }

    fn move_cursor_up(&self, _: usize) -> std::io::Result<()> {
        Ok(())
    }

    fn move_cursor_down(&self, _: usize) -> std::io::Result<()> {
        Ok(())
    }

    fn move_cursor_right(&self, _: usize) -> std::io::Result<()> {
        Ok(())
    }

    fn move_cursor_left(&self, _: usize) -> std::io::Result<()> {
        Ok(())
    }

    fn write_line(&self, s: &str) -> std::io::Result<()> {
        self.write_str(s)
    }

    fn write_str(&self, s: &str) -> std::io::Result<()> {
        self.0.lock().unwrap().pending.push_str(s);
        Ok(())
    }

    fn clear_line(&self) -> std::io::Result<()> {
        Ok(())
    }

    fn flush(&self) -> std::io::Result<()> {
        let mut state = self.0.lock().unwrap();
        let pending = std::mem::take(&mut state.pending);
        let line = pending.trim();
        let due = state.last_logged.is_none_or(|t| t.elapsed() >= LOG_EVERY);
        if !line.is_empty() && due {
            eprintln!("{line}");
            state.last_logged = Some(Instant::now());
        }
        Ok(())
    }
}
