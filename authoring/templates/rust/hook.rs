//! __NAME__: a flowhost hook in Rust. It sees the machine's lifecycle events
//! and may replace the context or send a transition elsewhere.
//!
//! This one guards transitions: one into a state whose name starts with
//! `unsafe_` goes to the state `review` instead.

wit_bindgen::generate!({ world: "hook", path: "wit" });

use flowhost::plugin::host::{self, LogLevel};

struct Plugin;

impl Guest for Plugin {
    fn info() -> PluginInfo {
        PluginInfo {
            name: "__NAME__".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            kinds: vec!["hook".into()],
            description: "Sends transitions into unsafe_ states to review".into(),
            config_schema: None,
        }
    }

    fn on_event(
        event: HookEvent,
        _meta: CallMeta,
        _context: String,
    ) -> Result<HookOutcome, PluginError> {
        let mut outcome = HookOutcome {
            context: None, // Some(json text) replaces the machine's context
            redirect: None,
        };
        if let HookEvent::Transition(t) = event
            && t.to.starts_with("unsafe_")
        {
            host::log(LogLevel::Info, &format!("{} -> {}: sent to review", t.from, t.to));
            outcome.redirect = Some("review".into());
        }
        Ok(outcome)
    }
}

export!(Plugin);
