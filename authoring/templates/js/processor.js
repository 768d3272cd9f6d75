// __NAME__: a flowhost processor in JavaScript. It gets the input as JSON text
// and returns its output as JSON text, or throws an error the engine
// understands ({tag: 'invalid-input' | 'retryable' | 'fatal', val: message}).
//
// Input:  {"name": "Ada"}
// Output: {"greeting": "Hello, Ada!"}

import { log } from 'flowhost:plugin/host@0.1.0';

export function info() {
  return {
    name: '__NAME__',
    version: '0.1.0',
    kinds: ['processor'],
    description: 'Greets by name',
    configSchema: undefined,
  };
}

export function process(meta, input) {
  const data = JSON.parse(input);
  if (data === null || typeof data !== 'object' || typeof data.name !== 'string') {
    // invalid-input: the engine does not retry; 'retryable' would.
    throw { tag: 'invalid-input', val: '`name` must be a string' };
  }
  log('debug', `greeting ${data.name}`);
  return JSON.stringify({ greeting: `Hello, ${data.name}!` });
}
