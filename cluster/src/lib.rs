//! medtune on Apache DataFusion Ballista: the scheduler and executor processes, with medtune's
//! row functions, row stages and codecs built in.
//!
//! Both are real Ballista (`ballista-scheduler`, `ballista-executor`); medtune adds its
//! functions to the scheduler's sessions (it plans with them) and to the executors' function
//! registry (they run them), and its codecs to both (plans carry chunk tables, and chunk jobs
//! that executors run to write a row stage's parts). Clients connect
//! through `medtune_pipeline::Engine` with `--cluster df://HOST:PORT`.

#![warn(missing_docs)]

mod executor;
mod scheduler;

pub use executor::{run_executor, ExecutorOptions};
pub use scheduler::{run_scheduler, SchedulerOptions};
