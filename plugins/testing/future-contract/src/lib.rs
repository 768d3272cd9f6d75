//! `future-contract` (test only): a processor built against
//! `flowhost:plugin@0.2.0`, a contract this host does not speak. Loading it
//! must fail with a `link` error that names both versions.

#![allow(clippy::too_many_arguments)] // generated bindings

wit_bindgen::generate!({ path: "wit", world: "processor" });

use flowhost::plugin::host;
use flowhost::plugin::types::LogLevel;

struct Future;

impl Guest for Future {
    fn info() -> PluginInfo {
        PluginInfo {
            name: "future-contract".into(),
            version: "0.1.0".into(),
            kinds: vec!["processor".into()],
            description: String::new(),
            config_schema: None,
        }
    }
    fn process(_meta: CallMeta, input: String) -> Result<String, PluginError> {
        host::log(LogLevel::Info, "from the future");
        Ok(input)
    }
}

export!(Future);
