// __NAME__: a flowhost hook in JavaScript. It sees the machine's lifecycle
// events and may replace the context or send a transition elsewhere.
//
// This one guards transitions: one into a state whose name starts with
// `unsafe_` goes to the state `review` instead.

import { log } from 'flowhost:plugin/host@0.1.0';

export function info() {
  return {
    name: '__NAME__',
    version: '0.1.0',
    kinds: ['hook'],
    description: 'Sends transitions into unsafe_ states to review',
    configSchema: undefined,
  };
}

export function onEvent(event, meta, context) {
  // context: <json text> replaces the machine's context; undefined keeps it.
  if (event.tag === 'transition' && event.val.to.startsWith('unsafe_')) {
    log('info', `${event.val.from} -> ${event.val.to}: sent to review`);
    return { context: undefined, redirect: 'review' };
  }
  return { context: undefined, redirect: undefined };
}
