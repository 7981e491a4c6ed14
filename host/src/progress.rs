//! Progress for the slow first-run steps (download, verify, compile): spinners and byte bars on
//! a terminal, plain log lines with timings otherwise, nothing at all when quiet.

use std::borrow::Cow;
use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

#[derive(Debug, Clone, Copy)]
enum Mode {
    Terminal,
    Log,
    Quiet,
}

#[derive(Debug, Clone, Copy)]
pub struct Progress {
    mode: Mode,
}

impl Progress {
    /// Bars when stderr is a terminal, log lines when it is not.
    pub fn auto() -> Self {
        let mode = if std::io::stderr().is_terminal() { Mode::Terminal } else { Mode::Log };
        Progress { mode }
    }

    /// Log lines only (servers, tests).
    pub fn log() -> Self {
        Progress { mode: Mode::Log }
    }

    pub fn quiet() -> Self {
        Progress { mode: Mode::Quiet }
    }

    pub fn is_interactive(&self) -> bool {
        matches!(self.mode, Mode::Terminal)
    }

    /// A one-line announcement.
    pub fn note(&self, message: impl Into<Cow<'static, str>>) {
        let message = message.into();
        match self.mode {
            Mode::Terminal => eprintln!("  {message}"),
            Mode::Log => tracing::info!("{message}"),
            Mode::Quiet => {}
        }
    }

    /// A step of unknown length: a spinner with the elapsed time.
    pub fn step(&self, message: impl Into<Cow<'static, str>>) -> Step {
        let message = message.into();
        let bar = match self.mode {
            Mode::Terminal => {
                let bar = ProgressBar::new_spinner().with_message(message.clone());
                bar.set_style(
                    ProgressStyle::with_template("  {spinner} {msg} [{elapsed}]")
                        .unwrap_or_else(|_| ProgressStyle::default_spinner()),
                );
                bar.enable_steady_tick(Duration::from_millis(120));
                Some(bar)
            }
            Mode::Log => {
                tracing::info!("{message}…");
                None
            }
            Mode::Quiet => None,
        };
        Step { bar, mode: self.mode, started: Instant::now() }
    }

    /// A step of known size in bytes.
    pub fn bytes(&self, message: impl Into<Cow<'static, str>>, total: u64) -> Step {
        let message = message.into();
        let bar = match self.mode {
            Mode::Terminal => {
                let bar = ProgressBar::new(total).with_message(message);
                bar.set_style(
                    ProgressStyle::with_template("  {msg} [{bar:30}] {bytes}/{total_bytes} ({bytes_per_sec})")
                        .unwrap_or_else(|_| ProgressStyle::default_bar())
                        .progress_chars("=> "),
                );
                Some(bar)
            }
            Mode::Log => {
                tracing::info!("{message} ({} MB)…", total / 1_000_000);
                None
            }
            Mode::Quiet => None,
        };
        Step { bar, mode: self.mode, started: Instant::now() }
    }
}

/// A running step; `finish` reports how long it took.
pub struct Step {
    bar: Option<ProgressBar>,
    mode: Mode,
    started: Instant,
}

impl Step {
    pub fn inc(&self, n: u64) {
        if let Some(bar) = &self.bar {
            bar.inc(n);
        }
    }

    pub fn finish(self, message: impl Into<Cow<'static, str>>) {
        let message = message.into();
        let took = self.started.elapsed().as_secs_f64();
        match (&self.bar, self.mode) {
            (Some(bar), _) => bar.finish_with_message(format!("{message} ({took:.1} s)")),
            (None, Mode::Log) => tracing::info!("{message} ({took:.1} s)"),
            _ => {}
        }
    }
}

impl Step {
    /// Ends a byte bar without a message of its own.
    pub fn done(self) {
        if let Some(bar) = &self.bar {
            bar.finish();
        }
    }
}
