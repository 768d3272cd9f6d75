// __NAME__: a flowhost processor in C, against the bindings that
// `flowhost plugin build` generates from wit/plugin.wit (processor.h).
//
// Input:  {"name": "Ada"}
// Output: {"greeting": "Hello, Ada!"}
//
// Ownership (wit-bindgen C): the arguments of an export belong to the callee,
// which frees them; returned strings must be malloc'd (the host's post-return
// call frees them). This example reads the input with a few string
// functions; a real plugin would use a JSON library (cJSON, yyjson, ...).

#include "processor.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void exports_processor_info(processor_plugin_info_t *ret) {
  processor_string_dup(&ret->name, "__NAME__");
  processor_string_dup(&ret->version, "0.1.0");
  ret->kinds.len = 1;
  ret->kinds.ptr = malloc(sizeof(processor_string_t));
  processor_string_dup(&ret->kinds.ptr[0], "processor");
  processor_string_dup(&ret->description, "Greets by name");
  ret->config_schema.is_some = false;
}

// The string value of "name" in a flat JSON object (no escapes), or NULL.
static char *name_of(const processor_json_t *input) {
  char *text = strndup((const char *)input->ptr, input->len);
  char *name = NULL;
  char *at = text ? strstr(text, "\"name\"") : NULL;
  if (at) {
    at += strlen("\"name\"");
    while (*at == ' ' || *at == ':') at++;
    char *end = *at == '"' ? strchr(at + 1, '"') : NULL;
    if (end) name = strndup(at + 1, (size_t)(end - at - 1));
  }
  free(text);
  return name;
}

bool exports_processor_process(processor_call_meta_t *meta, processor_json_t *input, processor_json_t *ret,
                               processor_plugin_error_t *err) {
  char *name = name_of(input);
  processor_call_meta_free(meta);
  processor_json_free(input);
  if (!name) {
    // invalid-input: the engine does not retry; ..._RETRYABLE would.
    err->tag = FLOWHOST_PLUGIN_TYPES_PLUGIN_ERROR_INVALID_INPUT;
    processor_string_dup(&err->val.invalid_input, "`name` must be a string");
    return false;
  }
  size_t size = strlen(name) + 32;
  char *out = malloc(size);
  snprintf(out, size, "{\"greeting\":\"Hello, %s!\"}", name);
  processor_string_dup(ret, out);
  free(out);

  processor_string_t note;
  processor_string_set(&note, "greeted");
  flowhost_plugin_host_log(FLOWHOST_PLUGIN_TYPES_LOG_LEVEL_DEBUG, &note);
  free(name);
  return true;
}
