// reshape: builds a new JSON object from dotted paths into the input, a
// flowhost processor written in JavaScript.
//
// Config: {"mapping": {"<output.path>": "<input.path>", ...}, "strict": false}
// Input:  any JSON object.
// Output: the object the mapping describes. A missing input path gives null,
//         or an invalid-input error when "strict" is true. Without a mapping
//         the input comes back unchanged.
//
// For the sandbox tests, an input with "_spin": true loops forever (it must be
// stopped by the host's time limit) and "_fail": "<kind>" returns that error.

import { config, log } from 'flowhost:plugin/host@0.1.0';

const KINDS = { invalid_input: 'invalid-input', retryable: 'retryable', fatal: 'fatal' };

function fail(kind, message) {
  return { tag: KINDS[kind] ?? 'fatal', val: message };
}

function get(value, path) {
  let current = value;
  for (const key of path.split('.')) {
    if (current === null || typeof current !== 'object' || !(key in current)) {
      return undefined;
    }
    current = current[key];
  }
  return current;
}

function set(target, path, value) {
  const keys = path.split('.');
  let current = target;
  for (const key of keys.slice(0, -1)) {
    if (current[key] === null || typeof current[key] !== 'object') {
      current[key] = {};
    }
    current = current[key];
  }
  current[keys[keys.length - 1]] = value;
}

function readConfig() {
  const cfg = JSON.parse(config());
  if (cfg.mapping !== undefined) {
    const ok = cfg.mapping !== null && typeof cfg.mapping === 'object' && !Array.isArray(cfg.mapping)
      && Object.values(cfg.mapping).every((v) => typeof v === 'string');
    if (!ok) {
      throw fail('invalid_input', 'config `mapping` must be an object of "output.path": "input.path" strings');
    }
  }
  return cfg;
}

export function info() {
  return {
    name: 'reshape',
    version: '0.1.0',
    kinds: ['processor'],
    description: 'Reshapes JSON by dotted-path mapping (JavaScript)',
    configSchema: undefined,
  };
}

export function process(meta, input) {
  let data;
  try {
    data = JSON.parse(input);
  } catch (e) {
    throw fail('invalid_input', `input is not JSON: ${e.message}`);
  }
  if (data !== null && typeof data === 'object') {
    if (data._spin) {
      for (;;) {}
    }
    if (data._fail !== undefined) {
      throw fail(String(data._fail), 'failure requested by the input');
    }
  }
  const cfg = readConfig();
  if (cfg.mapping === undefined) {
    return JSON.stringify(data);
  }
  const out = {};
  for (const [to, from] of Object.entries(cfg.mapping)) {
    const value = get(data, from);
    if (value === undefined && cfg.strict) {
      throw fail('invalid_input', `input has no \`${from}\` (needed for \`${to}\`)`);
    }
    set(out, to, value === undefined ? null : value);
  }
  log('debug', `reshaped ${Object.keys(cfg.mapping).length} paths in state ${meta.state}`);
  return JSON.stringify(out);
}
