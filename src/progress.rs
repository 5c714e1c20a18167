//! Progress bars on stderr (rows/s and bytes), one per running stage. When stderr is not a
//! terminal (a run under `nohup`, a CI log) the bars are hidden and a plain progress line is
//! written instead, at most every [`LOG_EVERY`].

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use indicatif::{HumanCount, ProgressBar, ProgressStyle};
use medtune_pipeline::{ProgressObserver, WorkUnit};

/// How often a hidden bar writes its progress line.
const LOG_EVERY: Duration = Duration::from_secs(30);

struct Running {
    bar: ProgressBar,
    started: Instant,
    /// When the last progress line was written (hidden bars only).
    logged: Instant,
    /// What the bar counts, once the stage has said.
    unit: Option<WorkUnit>,
}

impl Running {
    /// Writes `stage`'s position and message as a line when the bar is hidden and the last
    /// line is older than [`LOG_EVERY`].
    fn log_line(&mut self, stage: &str) {
        if !self.bar.is_hidden() || self.logged.elapsed() < LOG_EVERY {
            return;
        }
        self.logged = Instant::now();
        let position = match self.bar.length() {
            Some(total) => format!("{}/{}", self.bar.position(), total),
            None => self.bar.position().to_string(),
        };
        eprintln!(
            "medtune: {stage}: {position} {} ({:.0} s)",
            self.bar.message(),
            self.started.elapsed().as_secs_f64()
        );
    }
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
                logged: Instant::now(),
                unit: None,
            },
        );
    }

    fn work_total(&self, stage: &str, total: u64, unit: WorkUnit) {
        if let Some(r) = self.running.lock().expect("progress lock").get_mut(stage) {
            r.unit = Some(unit);
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
        if let Some(r) = self.running.lock().expect("progress lock").get_mut(stage) {
            r.bar.set_position(work_done);
            if r.unit == Some(WorkUnit::Steps) {
                // A step count: the stage's own message (loss, speed) says the rest.
                return;
            }
            let secs = r.started.elapsed().as_secs_f64().max(1e-3);
            r.bar.set_message(format!(
                "{} rows ({}/s)",
                HumanCount(rows),
                HumanCount((rows as f64 / secs) as u64)
            ));
            r.log_line(stage);
        }
    }

    fn message(&self, stage: &str, message: &str) {
        if let Some(r) = self.running.lock().expect("progress lock").get_mut(stage) {
            r.bar.set_message(message.to_string());
            r.log_line(stage);
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
