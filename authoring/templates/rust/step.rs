//! __NAME__: a flowhost step in Rust. It does a state's work and may choose
//! the machine's next state.
//!
//! Context: {"urgent": true}  →  output {"lane": "fast"}, next state `fast`
//! otherwise                  →  output {"lane": "normal"}, next state `normal`

wit_bindgen::generate!({ world: "step", path: "wit" });

use serde_json::{Value, json};

struct Plugin;

impl Guest for Plugin {
    fn info() -> PluginInfo {
        PluginInfo {
            name: "__NAME__".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            kinds: vec!["step".into()],
            description: "Sends urgent work to the fast lane".into(),
            config_schema: None,
        }
    }

    fn run(_meta: CallMeta, context: String) -> Result<StepResult, PluginError> {
        let context: Value = serde_json::from_str(&context)
            .map_err(|e| PluginError::InvalidInput(format!("context is not JSON: {e}")))?;
        if !context.is_object() {
            return Err(PluginError::InvalidInput("the context must be an object".into()));
        }
        let lane = if context["urgent"] == json!(true) { "fast" } else { "normal" };
        Ok(StepResult {
            output: json!({ "lane": lane }).to_string(),
            next: Some(lane.into()),
        })
    }
}

export!(Plugin);
