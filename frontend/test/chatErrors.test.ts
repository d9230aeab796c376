import { test } from 'node:test';
import assert from 'node:assert/strict';
import { describeChatFailure } from '../lib/chatErrors.js';

test('an unreachable LLM endpoint (502 with the backend detail)', () => {
  const p = describeChatFailure({ kind: 'http', status: 502, detail: 'LLM endpoint unreachable: ConnectError' });
  assert.match(p.message, /language model service is not reachable/);
  assert.equal(p.detail, 'LLM endpoint unreachable: ConnectError');
});

test('an LLM endpoint answering with an error status', () => {
  const p = describeChatFailure({ kind: 'http', status: 502, detail: 'LLM endpoint returned HTTP 500: boom' });
  assert.match(p.message, /answered with an error/);
  assert.equal(p.detail, 'LLM endpoint returned HTTP 500: boom');
});

test('a slow LLM endpoint (504)', () => {
  const p = describeChatFailure({ kind: 'http', status: 504, detail: 'LLM endpoint did not respond in time' });
  assert.match(p.message, /taking too long/);
});

test('a proxy error page (no backend JSON) means the chat server itself is down', () => {
  for (const status of [502, 503, 504]) {
    const p = describeChatFailure({ kind: 'http', status, detail: null });
    assert.match(p.message, new RegExp(`chat server is not available.*HTTP ${status}`));
    assert.equal(p.detail, undefined);
  }
});

test('errors in the middle of the stream', () => {
  assert.match(
    describeChatFailure({ kind: 'stream', error: 'LLM stream interrupted: ReadTimeout: ' }).message,
    /cut off/,
  );
  assert.match(
    describeChatFailure({ kind: 'stream', error: 'LLM endpoint error: model exploded' }).message,
    /reported an error/,
  );
  const other = describeChatFailure({ kind: 'stream', error: 'Internal error while streaming' });
  assert.match(other.message, /could not be completed/);
  assert.equal(other.detail, 'Internal error while streaming');
});

test('network failures, missing conversations, rate limits and the rest', () => {
  assert.match(describeChatFailure({ kind: 'network' }).message, /Cannot reach the server/);
  assert.match(describeChatFailure({ kind: 'http', status: 404, detail: 'Conversation not found' }).message, /no longer exists/);
  assert.match(describeChatFailure({ kind: 'http', status: 429, detail: null }).message, /Too many requests/);
  assert.equal(describeChatFailure({ kind: 'http', status: 422, detail: 'bad input' }).message, 'bad input');
  assert.equal(describeChatFailure({ kind: 'http', status: 418, detail: null }).message, 'The request failed (HTTP 418).');
});
