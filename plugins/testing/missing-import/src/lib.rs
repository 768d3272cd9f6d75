//! `missing-import` (test only): a processor that imports an interface no
//! flowhost host provides. Loading it must fail with a `link` error naming
//! the import.

#![allow(clippy::too_many_arguments)] // generated bindings

wit_bindgen::generate!({ path: "wit", world: "needs-secret" });

use flowhost::plugin::secret_service;

struct NeedsSecret;

impl Guest for NeedsSecret {
    fn info() -> PluginInfo {
        PluginInfo {
            name: "missing-import".into(),
            version: "0.1.0".into(),
            kinds: vec!["processor".into()],
            description: String::new(),
            config_schema: None,
        }
    }
    fn process(_meta: CallMeta, _input: String) -> Result<String, PluginError> {
        Ok(format!("{:?}", secret_service::reveal()))
    }
}

export!(NeedsSecret);
