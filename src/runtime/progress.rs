//! The replay progress bar (indicatif, on stderr): partitions finished, offsets read of
//! those to read, rate and ETA, redrawn from the readers' [`SourceProgress`].

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};

use crate::source::SourceProgress;

/// A running progress bar; [`Bar::finish`] draws the final state and stops it.
pub struct Bar {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Bar {
    /// Draw the final state and stop redrawing.
    pub fn finish(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// (offsets to read, offsets read, partitions, partitions finished).
fn totals(progress: &SourceProgress) -> (u64, u64, usize, usize) {
    let snap = progress.partition_snapshot();
    let mut total = 0u64;
    let mut done = 0u64;
    let mut finished = 0;
    for p in snap.values() {
        let end = p.end.unwrap_or(p.high_watermark.max(p.read));
        total += (end - p.start).max(0) as u64;
        done += (p.read.min(end) - p.start).max(0) as u64;
        if p.read >= end {
            finished += 1;
        }
    }
    (total, done, snap.len(), finished)
}

/// Start redrawing a bar every 200 ms.
pub fn spawn_bar(progress: Arc<SourceProgress>) -> Bar {
    let stop = Arc::new(AtomicBool::new(false));
    let stop_t = Arc::clone(&stop);
    let thread = std::thread::Builder::new()
        .name("freshet-progress".into())
        .spawn(move || {
            let bar = ProgressBar::new(0);
            bar.set_style(
                ProgressStyle::with_template(
                    "{msg} [{elapsed_precise}] {wide_bar} {human_pos}/{human_len} offsets {per_sec} ETA {eta}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
            loop {
                let (total, done, parts, finished) = totals(&progress);
                bar.set_length(total);
                bar.set_position(done);
                bar.set_message(format!("replay: {finished}/{parts} partitions"));
                if stop_t.load(Ordering::Relaxed) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(200));
            }
            bar.finish();
        })
        .ok();
    Bar { stop, thread }
}
