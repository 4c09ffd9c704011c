//! A progress bar on stderr, shown only when stdout is a terminal.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::IsTerminal;
use std::time::Duration;

fn bar(len: u64, template: &str) -> ProgressBar {
    let pb = ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::hidden());
    if std::io::stdout().is_terminal() {
        pb.set_draw_target(ProgressDrawTarget::stderr());
    }
    pb.set_style(ProgressStyle::with_template(template).expect("valid template"));
    pb
}

/// Counts things (connections) up to `len`.
pub fn counter(len: u64, label: &str) -> ProgressBar {
    let pb = bar(len, "{prefix:>10} [{bar:40}] {pos}/{len} {msg}");
    pb.set_prefix(label.to_string());
    pb
}

/// Shows time passing over a phase of `length`; the message carries live counters.
pub fn timer(length: Duration, label: &str) -> ProgressBar {
    let pb = bar(
        length.as_millis() as u64,
        "{prefix:>10} [{bar:40}] {elapsed} {msg}",
    );
    pb.set_prefix(label.to_string());
    pb
}
