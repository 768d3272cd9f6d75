//! The execution state a plugin sees (`state-get/set/...` in the host
//! interface), backed by the store's [`State`] rows of the execution: the
//! same rows the daemon's `/workflows/{id}/state` reads and changes. Each
//! operation is one atomic store write, durable when it returns, and not
//! rolled back when a state is re-run (at-least-once, like the steps).

use crate::backend::{Backend, StateAnswer, StateOp};
use crate::plugin::ExecutionState;
use serde_json::Value;
use std::sync::Arc;

/// One execution's state in the store.
pub struct StoreState {
    backend: Arc<dyn Backend>,
    execution: String,
}

impl StoreState {
    pub fn new(backend: Arc<dyn Backend>, execution: impl Into<String>) -> Self {
        StoreState {
            backend,
            execution: execution.into(),
        }
    }

    async fn apply(&self, key: &str, op: StateOp) -> Result<StateAnswer, String> {
        match self.backend.state_apply(&self.execution, key, op).await {
            Ok(Ok(answer)) => Ok(answer),
            Ok(Err(conflict)) => Err(conflict.0),
            Err(e) => Err(e.to_string()),
        }
    }
}

fn unexpected(a: StateAnswer) -> String {
    format!("internal: unexpected state answer {a:?}")
}

#[async_trait::async_trait]
impl ExecutionState for StoreState {
    async fn get(&self, key: &str) -> Result<Option<Value>, String> {
        self.backend
            .state_get(&self.execution, key)
            .await
            .map_err(|e| e.to_string())
    }

    async fn set(&self, key: &str, value: Value) -> Result<(), String> {
        self.apply(key, StateOp::Set(value)).await.map(|_| ())
    }

    async fn increment(&self, key: &str, delta: i64) -> Result<i64, String> {
        match self.apply(key, StateOp::Increment(delta)).await? {
            StateAnswer::Count(n) => Ok(n),
            other => Err(unexpected(other)),
        }
    }

    async fn append(&self, key: &str, value: Value) -> Result<u64, String> {
        match self.apply(key, StateOp::Append(value)).await? {
            StateAnswer::Length(n) => Ok(n),
            other => Err(unexpected(other)),
        }
    }

    async fn compare_and_swap(
        &self,
        key: &str,
        expected: Option<Value>,
        new: Option<Value>,
    ) -> Result<bool, String> {
        match self
            .apply(key, StateOp::CompareAndSwap { expected, new })
            .await?
        {
            StateAnswer::Swapped { swapped, .. } => Ok(swapped),
            other => Err(unexpected(other)),
        }
    }
}
