//! The terminal side of [`crate::ops::progress::Observer`]: each step as one
//! line on standard error, a bar (indicatif) for measured work when
//! standard error is a terminal, and the yes/no prompt. One display serves
//! bootstrap, rejoin and rewrap.

use std::io::{IsTerminal, Write};

use indicatif::{ProgressBar, ProgressStyle};

use crate::error::{Error, Result};
use crate::ops::progress::{Observer, Unit};

/// Shows the steps; a bar for measured work on a terminal.
pub(crate) struct Display {
    /// Every question is answered yes (`--yes`).
    yes: bool,
    terminal: bool,
    bar: Option<ProgressBar>,
    /// The measured work's label, so a repeated one is not printed again.
    label: Option<String>,
}

/// A display; `yes` answers every question.
pub(crate) fn display(yes: bool) -> Display {
    Display {
        yes,
        terminal: std::io::stderr().is_terminal(),
        bar: None,
        label: None,
    }
}

fn style(unit: Unit) -> ProgressStyle {
    let template = match unit {
        Unit::Bytes => "{msg:>12} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} ETA {eta}",
        Unit::Rows => "{msg} [{bar:30}] {pos}/{len} rows, {per_sec}, ETA {eta}",
    };
    ProgressStyle::with_template(template)
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ")
}

impl Display {
    /// Clears the bar (before the report is printed).
    pub(crate) fn done_with_bar(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
        self.label = None;
    }
}

impl Observer for Display {
    fn step(&mut self, what: &str) {
        self.done_with_bar();
        eprintln!("{what}");
    }

    fn work(&mut self, label: &str, line: &str, unit: Unit) {
        if self.label.as_deref() == Some(label) {
            return;
        }
        self.label = Some(label.to_string());
        if self.terminal {
            let bar = self.bar.get_or_insert_with(|| ProgressBar::new(0));
            bar.set_style(style(unit));
            bar.set_message(label.to_string());
        } else {
            eprintln!("{line}");
        }
    }

    fn progress(&mut self, done: u64, total: u64) {
        if let Some(bar) = &self.bar {
            bar.set_length(total.max(done));
            bar.set_position(done);
        }
    }

    fn note(&mut self, what: &str) {
        match &self.bar {
            Some(bar) => bar.println(what),
            None => eprintln!("{what}"),
        }
    }

    fn finished(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish();
        }
        self.label = None;
    }

    fn confirm(&mut self, question: &str) -> Result<bool> {
        if self.yes {
            return Ok(true);
        }
        if !crate::secret::have_terminal() {
            return Ok(false);
        }
        self.done_with_bar();
        eprint!("{question} [y/N] ");
        let _ = std::io::stderr().flush();
        let mut answer = String::new();
        std::io::stdin()
            .read_line(&mut answer)
            .map_err(Error::io("cannot read the answer"))?;
        Ok(matches!(answer.trim(), "y" | "Y" | "yes" | "YES" | "Yes"))
    }
}
