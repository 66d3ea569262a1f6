//! Pure types and rules of the service: run templates and their validation, task definitions,
//! the run status state machine, schedules, token scopes, webhook checks. Nothing in here does
//! I/O; everything here is testable inline.

pub mod attempt;
pub mod auth;
pub mod indexes;
pub mod loglines;
pub mod masking;
pub mod names;
pub mod params;
pub mod policy;
pub mod queue;
pub mod report;
pub mod run;
pub mod sandbox;
pub mod schedule;
pub mod status;
pub mod submission;
pub mod task;
pub mod template;
pub mod validation;
pub mod webhook;

pub use auth::{Caller, Denied, Scope};
pub use policy::RunPolicy;
pub use queue::{Concurrency, QueuePolicy, QueueState};
pub use run::{AdHocRun, JobRef, LaunchInfo, PodCounts, PodRecord, Run, RunOverrides, Trigger};
pub use status::RunStatus;
pub use submission::{CapReached, Caps, Origin, Submission};
pub use task::{ScheduleSpec, Task, TaskName, TaskSpec};
pub use template::RunTemplate;
pub use validation::{FieldError, Invalid};
