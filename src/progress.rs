//! A progress bar for long removals: entries, files and bytes, on stderr when it is a terminal.
//!
//! The removal threads only bump the atomic counters of [`remove::Progress`]; one draw thread
//! reads them every 100 ms, so the bar costs the removal nothing. Nothing is drawn during the
//! first [`DELAY`] (a quick run prints no bar at all), with `--quiet`, with `--format json`,
//! or when stderr is not a terminal. The bar is cleared when the removal ends, before the
//! summary is printed.

use std::io::IsTerminal;
use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressState, ProgressStyle};

use crate::remove::Progress;
use crate::report::human_bytes;

/// How often the bar is redrawn.
const TICK: Duration = Duration::from_millis(100);
/// Removals shorter than this show no bar.
const DELAY: Duration = Duration::from_millis(300);

/// Whether a bar is wanted: human output, not quiet, stderr a terminal.
pub fn wanted(json: bool, quiet: bool) -> bool {
    !json && !quiet && std::io::stderr().is_terminal()
}

/// A running bar; stopped and cleared by [`Bar::finish`] or when dropped.
pub struct Bar {
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Bar {
    /// Draw `progress` against `total` entries when `enabled`; otherwise a bar that does
    /// nothing.
    pub fn start(progress: Arc<Progress>, total: u64, dry_run: bool, enabled: bool) -> Self {
        if !enabled || total == 0 {
            return Bar { stop: None, thread: None };
        }
        let (tx, rx) = mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("progress".into())
            .spawn(move || draw(&progress, total, dry_run, &rx))
            .ok();
        Bar { stop: Some(tx), thread }
    }

    /// Stop drawing and clear the bar.
    pub fn finish(mut self) {
        self.stop_and_join();
    }

    fn stop_and_join(&mut self) {
        // Dropping the sender wakes the draw thread at once.
        self.stop.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Bar {
    fn drop(&mut self) {
        self.stop_and_join();
    }
}

/// The line after the bar: `1,234 files, 56.7MiB`.
pub fn message(files: u64, bytes: u64) -> String {
    format!("{} files, {}", files, human_bytes(bytes))
}

fn draw(progress: &Arc<Progress>, total: u64, dry_run: bool, stop: &mpsc::Receiver<()>) {
    let start = Instant::now();
    let mut bar: Option<ProgressBar> = None;
    // Until stopped (the sender dropped): then clear and leave.
    while let Err(mpsc::RecvTimeoutError::Timeout) = stop.recv_timeout(TICK) {
        if start.elapsed() < DELAY {
            continue;
        }
        let bar = bar.get_or_insert_with(|| {
            // The counts are read when the line is drawn: one draw per tick.
            let counters = progress.clone();
            let style =
                ProgressStyle::with_template("{prefix} [{bar:25}] {pos}/{len} entries, {counts} ({elapsed})")
                    .unwrap_or_else(|_| ProgressStyle::default_bar())
                    .with_key("counts", move |_: &ProgressState, w: &mut dyn std::fmt::Write| {
                        let files = counters.files.load(Ordering::Relaxed);
                        let _ = w.write_str(&message(files, counters.bytes.load(Ordering::Relaxed)));
                    })
                    .progress_chars("=> ");
            ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr_with_hz(10))
                .with_style(style)
                .with_prefix(if dry_run { "Measuring" } else { "Removing" })
                .with_elapsed(start.elapsed())
        });
        let done = progress.entries.load(Ordering::Relaxed).min(total);
        bar.update(|state| state.set_pos(done));
    }
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disabled_bar_starts_no_thread_and_stops_at_once() {
        let progress = Arc::new(Progress::default());
        let bar = Bar::start(progress.clone(), 10, false, false);
        assert!(bar.thread.is_none());
        bar.finish();
        let bar = Bar::start(progress, 0, false, true);
        assert!(bar.thread.is_none());
    }

    #[test]
    fn enabled_bar_stops_promptly() {
        let progress = Arc::new(Progress::default());
        progress.entries.store(3, Ordering::Relaxed);
        let started = Instant::now();
        // The draw target is stderr; under `cargo test` it is usually not a terminal, and
        // indicatif then draws nothing, but the thread still runs and must stop on request.
        let bar = Bar::start(progress, 10, true, true);
        std::thread::sleep(Duration::from_millis(50));
        bar.finish();
        assert!(started.elapsed() < Duration::from_secs(2));
    }

    #[test]
    fn message_counts_files_and_bytes() {
        assert_eq!(message(12, 2048), "12 files, 2.0KiB");
        assert!(!wanted(true, false));
        assert!(!wanted(false, true));
    }
}
