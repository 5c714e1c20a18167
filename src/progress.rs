//! Progress bars on stderr (rows/s and bytes), one per running stage.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

use indicatif::{HumanCount, ProgressBar, ProgressStyle};
use medtune_pipeline::{ProgressObserver, WorkUnit};

struct Running {
    bar: ProgressBar,
    started: Instant,
}

/// Draws a bar per running stage with rows read, rows/s and work (bytes) done.
#[derive(Default)]
pub struct Bars {
    running: Mutex<HashMap<String, Running>>,
}

impl ProgressObserver for Bars {
    fn stage_started(&self, stage: &str) {
        let bar = ProgressBar::new_spinner();
        bar.set_style(
            ProgressStyle::with_template("{prefix:>10} {spinner} {msg}").expect("valid template"),
        );
        bar.set_prefix(stage.to_string());
        bar.enable_steady_tick(std::time::Duration::from_millis(120));
        self.running.lock().expect("progress lock").insert(
            stage.to_string(),
            Running {
                bar,
                started: Instant::now(),
            },
        );
    }

    fn work_total(&self, stage: &str, total: u64, unit: WorkUnit) {
        if let Some(r) = self.running.lock().expect("progress lock").get(stage) {
            let template = match unit {
                WorkUnit::Bytes => "{prefix:>10} [{bar:30}] {bytes}/{total_bytes} {msg} eta {eta}",
                WorkUnit::Rows => "{prefix:>10} [{bar:30}] {pos}/{len} rows {msg} eta {eta}",
                WorkUnit::Steps => "{prefix:>10} [{bar:30}] {pos}/{len} steps {msg} eta {eta}",
            };
            r.bar.set_length(total);
            r.bar.set_style(
                ProgressStyle::with_template(template)
                    .expect("valid template")
                    .progress_chars("=> "),
            );
        }
    }

    fn progress(&self, stage: &str, rows: u64, work_done: u64) {
        if let Some(r) = self.running.lock().expect("progress lock").get(stage) {
            let secs = r.started.elapsed().as_secs_f64().max(1e-3);
            r.bar.set_position(work_done);
            r.bar.set_message(format!(
                "{} rows ({}/s)",
                HumanCount(rows),
                HumanCount((rows as f64 / secs) as u64)
            ));
        }
    }

    fn message(&self, stage: &str, message: &str) {
        if let Some(r) = self.running.lock().expect("progress lock").get(stage) {
            r.bar.set_message(message.to_string());
        }
    }

    fn stage_finished(&self, stage: &str) {
        if let Some(r) = self.running.lock().expect("progress lock").remove(stage) {
            r.bar.finish_and_clear();
        }
    }

    fn warning(&self, stage: &str, message: &str) {
        let line = format!("medtune: warning: {stage}: {message}");
        match self.running.lock().expect("progress lock").get(stage) {
            // A hidden bar (stderr is not a terminal) drops println: write it directly then.
            Some(r) if !r.bar.is_hidden() => r.bar.println(line),
            _ => eprintln!("{line}"),
        }
    }
}
