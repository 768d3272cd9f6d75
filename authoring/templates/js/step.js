// __NAME__: a flowhost step in JavaScript. It does a state's work and may
// choose the machine's next state.
//
// Context: {"urgent": true}  ->  output {"lane": "fast"}, next state `fast`
// otherwise                  ->  output {"lane": "normal"}, next state `normal`

export function info() {
  return {
    name: '__NAME__',
    version: '0.1.0',
    kinds: ['step'],
    description: 'Sends urgent work to the fast lane',
    configSchema: undefined,
  };
}

export function run(meta, context) {
  const data = JSON.parse(context);
  if (data === null || typeof data !== 'object' || Array.isArray(data)) {
    throw { tag: 'invalid-input', val: 'the context must be an object' };
  }
  const lane = data.urgent === true ? 'fast' : 'normal';
  return { output: JSON.stringify({ lane }), next: lane };
}
