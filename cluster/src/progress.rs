//! Progress of long work on the operator's side (a directory put, a job followed by
//! `dml ctl`, `dml classify`): a bar with counts, rate and ETA when stderr is a terminal,
//! otherwise one plain line when it starts, every few seconds and when it ends. Always
//! on stderr, so that stdout stays the data.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressState, ProgressStyle};

/// How often plain lines are written when stderr is not a terminal.
pub const LINE_EVERY: Duration = Duration::from_secs(5);

/// How progress is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// A bar redrawn in place (a terminal).
    Bar,
    /// A plain line at the start, every `every`, and at the end (a log or a pipe).
    Lines { every: Duration },
    /// Nothing.
    Off,
}

impl Mode {
    /// A bar when stderr is a terminal, plain lines every [`LINE_EVERY`] otherwise.
    pub fn detect() -> Mode {
        if std::io::stderr().is_terminal() {
            Mode::Bar
        } else {
            Mode::Lines { every: LINE_EVERY }
        }
    }
}

/// The progress of `total` items of work, some of which may fail.
pub struct Progress {
    what: String,
    total: u64,
    done: u64,
    failed: u64,
    start: Instant,
    mode: Mode,
    bar: Option<ProgressBar>,
    last_line: Instant,
    out: Box<dyn Write + Send>,
}

impl Progress {
    /// Progress of `what` (e.g. "job 3-1") over `total` items, on stderr.
    pub fn new(what: impl Into<String>, total: u64, mode: Mode) -> Self {
        Self::to(what, total, mode, Box::new(std::io::stderr()))
    }

    /// As [`Progress::new`], writing plain lines to `out` (the bar always draws on
    /// stderr).
    pub fn to(what: impl Into<String>, total: u64, mode: Mode, out: Box<dyn Write + Send>) -> Self {
        let what = what.into();
        let bar = (mode == Mode::Bar).then(|| {
            let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
            let style = ProgressStyle::with_template(
                "{prefix} [{bar:30}] {pos}/{len} {msg} {rate} ETA {eta}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .with_key("rate", |s: &ProgressState, w: &mut dyn std::fmt::Write| {
                let _ = write!(w, "{:.1}/s", s.per_sec());
            })
            .progress_chars("#>-");
            bar.set_style(style);
            bar.set_prefix(what.clone());
            bar
        });
        let now = Instant::now();
        let mut p = Progress {
            what,
            total,
            done: 0,
            failed: 0,
            start: now,
            mode,
            bar,
            last_line: now,
            out,
        };
        p.line();
        p
    }

    /// The work is now `total` items.
    pub fn set_total(&mut self, total: u64) {
        self.total = total;
        if let Some(b) = &self.bar {
            b.set_length(total);
        }
    }

    /// `done` items are finished, `failed` of them failed.
    pub fn update(&mut self, done: u64, failed: u64) {
        self.done = done;
        self.failed = failed;
        if let Some(b) = &self.bar {
            b.set_position(done);
            if failed > 0 {
                b.set_message(format!("({failed} failed)"));
            }
        }
        if let Mode::Lines { every } = self.mode {
            if self.last_line.elapsed() >= every {
                self.line();
            }
        }
    }

    /// A message that must not be drawn over by the bar (a warning while following).
    pub fn note(&mut self, msg: &str) {
        match &self.bar {
            Some(b) => b.suspend(|| eprintln!("{msg}")),
            None if self.mode == Mode::Off => eprintln!("{msg}"),
            None => {
                let _ = writeln!(self.out, "{msg}");
            }
        }
    }

    /// The work ended (or was given up): the bar is left as it stands, a last line is
    /// written.
    pub fn finish(&mut self) {
        match self.bar.take() {
            // The bar stays on its line; what follows starts on the next.
            Some(b) => {
                b.abandon();
                eprintln!();
            }
            None => self.line(),
        }
    }

    /// The plain line: `WHAT: DONE/TOTAL (F failed), R/s, ETA T`.
    pub fn status(&self) -> String {
        let secs = self.start.elapsed().as_secs_f64();
        let rate = if secs > 0.0 {
            self.done as f64 / secs
        } else {
            0.0
        };
        let mut s = format!("{}: {}/{}", self.what, self.done, self.total);
        if self.failed > 0 {
            s.push_str(&format!(" ({} failed)", self.failed));
        }
        s.push_str(&format!(", {rate:.1}/s"));
        let left = self.total.saturating_sub(self.done);
        if left > 0 && rate > 0.0 {
            s.push_str(&format!(", ETA {}", duration(left as f64 / rate)));
        }
        s
    }

    fn line(&mut self) {
        if matches!(self.mode, Mode::Lines { .. }) {
            let line = self.status();
            let _ = writeln!(self.out, "{line}");
            self.last_line = Instant::now();
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        if self.bar.is_some() {
            self.finish();
        }
    }
}

/// Seconds as `1h02m`, `3m05s` or `42s`.
pub fn duration(secs: f64) -> String {
    let s = secs.round().max(0.0) as u64;
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    /// A writer whose bytes the test reads back.
    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);

    impl Write for Shared {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Shared {
        fn text(&self) -> String {
            String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
        }
    }

    #[test]
    fn plain_lines_at_start_periodically_and_at_the_end() {
        // Every update is due: a line each.
        let out = Shared::default();
        let every = Duration::ZERO;
        let mut p = Progress::to("put d/", 10, Mode::Lines { every }, Box::new(out.clone()));
        p.update(4, 1);
        p.finish();
        let text = out.text();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert!(lines[0].starts_with("put d/: 0/10, 0.0/s"), "{text}");
        assert!(lines[1].starts_with("put d/: 4/10 (1 failed), "), "{text}");
        assert!(lines[1].contains("/s, ETA "), "{text}");
        assert!(!text.contains('\r') && !text.contains('\x1b'), "{text:?}");

        // None is due: only the first and the last.
        let out = Shared::default();
        let every = Duration::from_secs(3600);
        let mut p = Progress::to("job 1-1", 5, Mode::Lines { every }, Box::new(out.clone()));
        p.update(2, 0);
        p.update(5, 0);
        p.finish();
        let text = out.text();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2, "{text}");
        assert!(lines[1].starts_with("job 1-1: 5/5, "), "{text}");
        assert!(!lines[1].contains("ETA"), "nothing left: {text}");
    }

    #[test]
    fn nothing_is_written_when_off() {
        let out = Shared::default();
        let mut p = Progress::to("x", 3, Mode::Off, Box::new(out.clone()));
        p.update(3, 0);
        p.finish();
        assert_eq!(out.text(), "");
    }

    #[test]
    fn durations_read_as_a_person_says_them() {
        assert_eq!(duration(42.4), "42s");
        assert_eq!(duration(185.0), "3m05s");
        assert_eq!(duration(3720.0), "1h02m");
    }
}
