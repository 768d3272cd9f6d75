//! The run queue: executions submitted by one process and run by whichever
//! worker process claims them. A submitted execution is stored `queued` (its
//! definition pinned, nothing run yet) and put on the job pool
//! [`EXECUTIONS_POOL`] as `{"execution": id}`, with the id as the job's
//! idempotency key; a worker claims the job (lease, fencing token, retries
//! and the reaper as for every pool), takes the execution tree's lease and
//! runs it with the local driver until it finishes, fails or parks.

use super::driver::to_checkpoint;
use super::owner::Held;
use super::record::Status;
use super::{Engine, EngineError, Outcome};
use crate::backend::NewJob;
use serde_json::{Value, json};
use std::path::Path;
use std::sync::Arc;

/// The job pool executions wait in for a worker.
pub const EXECUTIONS_POOL: &str = "executions";

/// What `submit` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Submitted {
    pub id: String,
    /// False: an execution with this id existed already (it was not
    /// submitted again).
    pub created: bool,
}

impl Engine {
    /// Stores a new execution of the machine in `file` as `queued` and puts
    /// it on the run queue. `id` is an idempotency key: an execution that
    /// exists already is left as it is (and put on the queue again if it is
    /// still queued, in case the first submit stopped between the two).
    pub async fn submit(
        self: &Arc<Self>,
        file: &Path,
        input: Value,
        id: Option<String>,
    ) -> Result<Submitted, EngineError> {
        let id = id.unwrap_or_else(Engine::new_execution_id);
        let created = match self.backend.load(&id).await? {
            Some(cp) if cp.status != Status::Queued => {
                return Ok(Submitted { id, created: false });
            }
            Some(_) => false,
            None => {
                let (def, definition) = self.pin_file(file).await?;
                let mut rec = self.new_record(&def, &definition, id.clone(), None, input);
                // (An initial context that did not render is an error the
                // worker's first step reports.)
                rec.status = Status::Queued;
                // Nobody owns it yet: nothing to fence.
                let checkpoint = to_checkpoint(&rec, self.now(), None, None)?;
                self.backend.save(checkpoint).await?;
                true
            }
        };
        let job = NewJob {
            idempotency_key: Some(id.clone()),
            max_retries: 10,
            ..NewJob::new(json!({ "execution": id }))
        };
        self.backend.push(EXECUTIONS_POOL, job).await?;
        Ok(Submitted { id, created })
    }

    /// Runs a queued execution (or continues one a worker left behind):
    /// takes its tree's lease and drives it until it finishes, fails or
    /// parks.
    pub async fn run_queued(self: &Arc<Self>, id: &str) -> Result<Outcome, EngineError> {
        let root = self.root_of(id).await?;
        let held: Held = self.own(&root.id).await?;
        let result = match self.load_record(id).await {
            Ok(mut rec) if rec.status == Status::Queued => {
                rec.status = match rec.error {
                    Some(_) => Status::Failed,
                    None => Status::Running,
                };
                match self.frame_of(&rec, &held, false).await {
                    Ok(frame) => self.drive(frame, rec, true).await,
                    Err(e) => Err(e),
                }
            }
            Ok(rec) => self.resume_owned(rec, &held, Default::default()).await,
            Err(e) => Err(e),
        };
        self.disown(held).await;
        result
    }
}
