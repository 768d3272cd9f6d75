// __NAME__: a flowhost step in C, against the bindings that
// `flowhost plugin build` generates from wit/plugin.wit (step.h). It does a
// state's work and may choose the machine's next state.
//
// Context: {"urgent": true}  ->  output {"lane": "fast"}, next state `fast`
// otherwise                  ->  output {"lane": "normal"}, next state `normal`
//
// Ownership (wit-bindgen C): the arguments of an export belong to the callee,
// which frees them; returned strings must be malloc'd. This example reads
// the context with a few string functions; a real plugin would use a JSON
// library (cJSON, yyjson, ...).

#include "step.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void exports_step_info(step_plugin_info_t *ret) {
  step_string_dup(&ret->name, "__NAME__");
  step_string_dup(&ret->version, "0.1.0");
  ret->kinds.len = 1;
  ret->kinds.ptr = malloc(sizeof(step_string_t));
  step_string_dup(&ret->kinds.ptr[0], "step");
  step_string_dup(&ret->description, "Sends urgent work to the fast lane");
  ret->config_schema.is_some = false;
}

bool exports_step_run(step_call_meta_t *meta, step_json_t *context, step_step_result_t *ret, step_plugin_error_t *err) {
  char *text = strndup((const char *)context->ptr, context->len);
  step_call_meta_free(meta);
  step_json_free(context);
  const char *start = text;
  while (*start == ' ' || *start == '\n' || *start == '\t' || *start == '\r') start++;
  if (*start != '{') {
    free(text);
    err->tag = FLOWHOST_PLUGIN_TYPES_PLUGIN_ERROR_INVALID_INPUT;
    step_string_dup(&err->val.invalid_input, "the context must be an object");
    return false;
  }
  const char *lane = strstr(text, "\"urgent\":true") ? "fast" : "normal";
  free(text);
  char out[32];
  snprintf(out, sizeof out, "{\"lane\":\"%s\"}", lane);
  step_string_dup(&ret->output, out);
  ret->next.is_some = true;
  step_string_dup(&ret->next.val, lane);
  return true;
}
