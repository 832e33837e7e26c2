//! Progress of a run: a bar with bytes/s and ETA on a terminal, plain lines every tenth otherwise.

use arrow_quant::pipeline::Progress;
use indicatif::{ProgressBar, ProgressStyle};
use std::io::IsTerminal;
use std::sync::Mutex;

/// Renders progress events on stderr.
pub struct Reporter {
    bar: Option<ProgressBar>,
    /// The stage and tenth of the last plain line (each stage counts from 0 again).
    last_tenth: Mutex<(&'static str, usize)>,
    quiet: bool,
}

impl Reporter {
    /// A reporter; `quiet` prints nothing.
    pub fn new(quiet: bool) -> Self {
        let bar = (!quiet && std::io::stderr().is_terminal()).then(|| {
            let bar = ProgressBar::new(0);
            let style = ProgressStyle::with_template(
                "{bar:40} {bytes}/{total_bytes} {binary_bytes_per_sec} ETA {eta} {wide_msg}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar());
            bar.set_style(style);
            bar
        });
        Self {
            bar,
            last_tenth: Mutex::new(("", 0)),
            quiet,
        }
    }

    /// Reports one finished tensor.
    pub fn update(&self, p: &Progress) {
        if self.quiet {
            return;
        }
        if let Some(bar) = &self.bar {
            bar.set_length(p.bytes_total as u64);
            bar.set_position(p.bytes_done as u64);
            bar.set_message(format!("{}: {}", p.stage, p.tensor));
            return;
        }
        let tenth = p.bytes_done * 10 / p.bytes_total.max(1);
        if let Ok(mut last) = self.last_tenth.lock() {
            if last.0 != p.stage || tenth > last.1 || p.done == p.total {
                *last = (p.stage, tenth);
                eprintln!(
                    "{:>5.1}% {} {}/{} tensors, {:.1} / {:.1} MB",
                    p.bytes_done as f64 * 100.0 / p.bytes_total.max(1) as f64,
                    p.stage,
                    p.done,
                    p.total,
                    p.bytes_done as f64 / 1e6,
                    p.bytes_total as f64 / 1e6
                );
            }
        }
    }

    /// Clears the bar.
    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}
