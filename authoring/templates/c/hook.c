// __NAME__: a flowhost hook in C, against the bindings that
// `flowhost plugin build` generates from wit/plugin.wit (hook.h). It sees
// the machine's lifecycle events and may replace the context or send a
// transition elsewhere.
//
// This one guards transitions: one into a state whose name starts with
// `unsafe_` goes to the state `review` instead.
//
// Ownership (wit-bindgen C): the arguments of an export belong to the callee,
// which frees them; returned strings must be malloc'd.

#include "hook.h"

#include <stdlib.h>
#include <string.h>

void exports_hook_info(hook_plugin_info_t *ret) {
  hook_string_dup(&ret->name, "__NAME__");
  hook_string_dup(&ret->version, "0.1.0");
  ret->kinds.len = 1;
  ret->kinds.ptr = malloc(sizeof(hook_string_t));
  hook_string_dup(&ret->kinds.ptr[0], "hook");
  hook_string_dup(&ret->description, "Sends transitions into unsafe_ states to review");
  ret->config_schema.is_some = false;
}

static bool starts_with(const hook_string_t *s, const char *prefix) {
  size_t n = strlen(prefix);
  return s->len >= n && memcmp(s->ptr, prefix, n) == 0;
}

bool exports_hook_on_event(hook_hook_event_t *event, hook_call_meta_t *meta, hook_json_t *context,
                           hook_hook_outcome_t *ret, hook_plugin_error_t *err) {
  (void)err;
  // context.is_some = true with JSON text replaces the machine's context.
  ret->context.is_some = false;
  ret->redirect.is_some = false;
  if (event->tag == FLOWHOST_PLUGIN_TYPES_HOOK_EVENT_TRANSITION && starts_with(&event->val.transition.to, "unsafe_")) {
    ret->redirect.is_some = true;
    hook_string_dup(&ret->redirect.val, "review");
    hook_string_t note;
    hook_string_set(&note, "transition sent to review");
    flowhost_plugin_host_log(FLOWHOST_PLUGIN_TYPES_LOG_LEVEL_INFO, &note);
  }
  hook_hook_event_free(event);
  hook_call_meta_free(meta);
  hook_json_free(context);
  return true;
}
