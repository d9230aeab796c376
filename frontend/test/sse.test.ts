import { test } from 'node:test';
import assert from 'node:assert/strict';
import { SSEParser, parseChatEvent, readChatEvents, type ChatEvent } from '../lib/sse.js';

test('parses complete messages and joins multi-line data', () => {
  const p = new SSEParser();
  const msgs = p.push('data: {"delta":"Hi"}\n\nevent: x\ndata: a\ndata: b\nid: 7\n\n');
  assert.deepEqual(msgs, [
    { event: 'message', data: '{"delta":"Hi"}' },
    { event: 'x', data: 'a\nb', id: '7' },
  ]);
});

test('handles chunks split anywhere, CRLF, comments and missing space', () => {
  const input = ': keep-alive\r\ndata:{"delta":"a"}\r\n\r\ndata: {"delta":"b"}\r\n\r\n';
  for (let i = 0; i <= input.length; i++) {
    const p = new SSEParser();
    const got = [...p.push(input.slice(0, i)), ...p.push(input.slice(i)), ...p.flush()];
    assert.deepEqual(
      got.map((m) => m.data),
      ['{"delta":"a"}', '{"delta":"b"}'],
      `split at ${i}`,
    );
  }
});

test('bare CR line endings and flush of an unterminated message', () => {
  const p = new SSEParser();
  assert.deepEqual(p.push('data: one\r\rdata: two'), [{ event: 'message', data: 'one' }]);
  assert.deepEqual(p.flush(), [{ event: 'message', data: 'two' }]);
  assert.deepEqual(p.flush(), []);
});

test('parseChatEvent recognises start, delta, done and error', () => {
  assert.deepEqual(parseChatEvent('{"delta":"x"}'), { type: 'delta', delta: 'x' });
  assert.deepEqual(parseChatEvent('{"done":true,"conversation_id":3,"message_id":9}'), {
    type: 'done',
    conversationId: 3,
    messageId: 9,
  });
  assert.deepEqual(parseChatEvent('{"error":"boom"}'), { type: 'error', error: 'boom' });
  assert.deepEqual(parseChatEvent('{"error":"boom","conversation_id":3}'), { type: 'error', error: 'boom' });
  assert.deepEqual(parseChatEvent('{"conversation_id":3,"user_message_id":8}'), {
    type: 'start',
    conversationId: 3,
    userMessageId: 8,
  });
  assert.equal(parseChatEvent('{"conversation_id":3}'), null);
  assert.equal(parseChatEvent('not json'), null);
  assert.equal(parseChatEvent('{"other":1}'), null);
  assert.equal(parseChatEvent('[DONE]'), null);
});

test('readChatEvents decodes a byte stream split inside a UTF-8 character', async () => {
  const text =
    'data: {"delta":"h\u00e9"}\n\ndata: {"delta":"\u{1F600}"}\n\n' +
    'data: {"done":true,"conversation_id":1,"message_id":2}\n\n';
  const bytes = new TextEncoder().encode(text);
  const chunks = [bytes.slice(0, 18), bytes.slice(18, 41), bytes.slice(41)];
  const stream = new ReadableStream<Uint8Array>({
    start(c) {
      for (const ch of chunks) c.enqueue(ch);
      c.close();
    },
  });
  const events: ChatEvent[] = [];
  for await (const ev of readChatEvents(stream)) events.push(ev);
  assert.deepEqual(events, [
    { type: 'delta', delta: 'h\u00e9' },
    { type: 'delta', delta: '\u{1F600}' },
    { type: 'done', conversationId: 1, messageId: 2 },
  ]);
});
