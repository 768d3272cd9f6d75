// jsonstat: statistics about a JSON document, a flowhost processor written
// in C against the bindings wit-bindgen generates from wit/plugin.wit.
//
// Input:  a JSON object or array (anything else is invalid input).
// Output: {"bytes": N, "max_depth": D, "strings": S, "keys": K, "fnv1a": "<16 hex digits>"}
//         where keys are strings followed by ':' and fnv1a hashes the input text.
//
// For the sandbox tests, an input containing "_spin":true loops forever (it
// must be stopped by the host's time limit) and "_fail":"<kind>" returns that
// plugin error.
//
// Ownership (wit-bindgen C): the arguments of an export belong to the callee,
// which frees them; returned strings must be malloc'd (the host's post-return
// call frees them).

#include "processor.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void dup_str(processor_string_t *out, const char *s) { processor_string_dup(out, s); }

static const uint8_t *find(const processor_string_t *hay, const char *needle) {
  size_t n = strlen(needle);
  if (n == 0 || hay->len < n) return NULL;
  for (size_t i = 0; i + n <= hay->len; i++) {
    if (memcmp(hay->ptr + i, needle, n) == 0) return hay->ptr + i;
  }
  return NULL;
}

static bool fail(processor_plugin_error_t *err, uint8_t tag, const char *message) {
  err->tag = tag;
  // Every variant case holds one string at the same place in the union.
  dup_str(&err->val.fatal, message);
  return false;
}

void exports_processor_info(processor_plugin_info_t *ret) {
  dup_str(&ret->name, "jsonstat");
  dup_str(&ret->version, "0.1.0");
  ret->kinds.len = 1;
  ret->kinds.ptr = malloc(sizeof(processor_string_t));
  dup_str(&ret->kinds.ptr[0], "processor");
  dup_str(&ret->description, "Statistics about a JSON document (C)");
  ret->config_schema.is_some = false;
}

static bool process(const processor_string_t *in, processor_json_t *ret, processor_plugin_error_t *err) {
  size_t i = 0;
  while (i < in->len && (in->ptr[i] == ' ' || in->ptr[i] == '\n' || in->ptr[i] == '\t' || in->ptr[i] == '\r')) i++;
  if (i == in->len || (in->ptr[i] != '{' && in->ptr[i] != '[')) {
    return fail(err, FLOWHOST_PLUGIN_TYPES_PLUGIN_ERROR_INVALID_INPUT, "input must be a JSON object or array");
  }
  if (find(in, "\"_spin\":true") || find(in, "\"_spin\": true")) {
    volatile uint64_t spins = 0;
    for (;;) spins++;
  }
  if (find(in, "\"_fail\":\"invalid_input\"")) {
    return fail(err, FLOWHOST_PLUGIN_TYPES_PLUGIN_ERROR_INVALID_INPUT, "failure requested by the input");
  }
  if (find(in, "\"_fail\":\"retryable\"")) {
    return fail(err, FLOWHOST_PLUGIN_TYPES_PLUGIN_ERROR_RETRYABLE, "failure requested by the input");
  }
  if (find(in, "\"_fail\":\"fatal\"")) {
    return fail(err, FLOWHOST_PLUGIN_TYPES_PLUGIN_ERROR_FATAL, "failure requested by the input");
  }

  uint64_t hash = 0xcbf29ce484222325ULL;
  int depth = 0, max_depth = 0;
  long strings = 0, keys = 0;
  bool in_string = false, escaped = false, string_ended = false;
  for (size_t j = 0; j < in->len; j++) {
    uint8_t c = in->ptr[j];
    hash = (hash ^ c) * 0x100000001b3ULL;
    if (in_string) {
      if (escaped) escaped = false;
      else if (c == '\\') escaped = true;
      else if (c == '"') { in_string = false; string_ended = true; strings++; }
      continue;
    }
    if (c == '"') { in_string = true; continue; }
    if (c == ':' && string_ended) keys++;
    if (c != ' ' && c != '\n' && c != '\t' && c != '\r') string_ended = false;
    if (c == '{' || c == '[') { depth++; if (depth > max_depth) max_depth = depth; }
    if (c == '}' || c == ']') depth--;
  }

  char out[160];
  snprintf(out, sizeof out,
           "{\"bytes\":%zu,\"max_depth\":%d,\"strings\":%ld,\"keys\":%ld,\"fnv1a\":\"%016" PRIx64 "\"}",
           in->len, max_depth, strings, keys, hash);
  dup_str(ret, out);

  processor_string_t note;
  processor_string_set(&note, "jsonstat: document measured");
  flowhost_plugin_host_log(FLOWHOST_PLUGIN_TYPES_LOG_LEVEL_DEBUG, &note);
  return true;
}

bool exports_processor_process(processor_call_meta_t *meta, processor_json_t *input, processor_json_t *ret,
                               processor_plugin_error_t *err) {
  bool ok = process(input, ret, err);
  processor_call_meta_free(meta);
  processor_json_free(input);
  return ok;
}
