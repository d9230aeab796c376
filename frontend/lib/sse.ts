// Pure server-sent-events parsing: no DOM, no React, no fetch. Unit tested in test/sse.test.ts.

export interface SSEMessage {
  event: string;
  data: string;
  id?: string;
}

/**
 * Incremental SSE parser (per the WHATWG event-stream format).
 * Feed it decoded text in arbitrary chunks; it returns every message that a
 * blank line completed. Lines may end in \n, \r\n or \r, and a chunk may
 * split anywhere, including between \r and \n.
 */
export class SSEParser {
  private buffer = '';
  private data: string[] = [];
  private event = '';
  private id: string | undefined;

  push(chunk: string): SSEMessage[] {
    this.buffer += chunk;
    const out: SSEMessage[] = [];
    for (;;) {
      const m = /\r\n|\r|\n/.exec(this.buffer);
      if (!m) break;
      // A lone trailing \r may be the first half of \r\n: wait for more input.
      if (m[0] === '\r' && m.index === this.buffer.length - 1) break;
      const line = this.buffer.slice(0, m.index);
      this.buffer = this.buffer.slice(m.index + m[0].length);
      const msg = this.line(line);
      if (msg) out.push(msg);
    }
    return out;
  }

  /** Call at end of stream: dispatches a final message that lacked its blank line. */
  flush(): SSEMessage[] {
    const out: SSEMessage[] = [];
    if (this.buffer !== '') {
      const msg = this.line(this.buffer.replace(/\r$/, ''));
      this.buffer = '';
      if (msg) out.push(msg);
    }
    const last = this.line('');
    if (last) out.push(last);
    return out;
  }

  private line(line: string): SSEMessage | null {
    if (line === '') {
      if (this.data.length === 0) {
        this.event = '';
        return null;
      }
      const msg: SSEMessage = { event: this.event || 'message', data: this.data.join('\n') };
      if (this.id !== undefined) msg.id = this.id;
      this.data = [];
      this.event = '';
      return msg;
    }
    if (line.startsWith(':')) return null; // comment / keep-alive
    const colon = line.indexOf(':');
    const field = colon === -1 ? line : line.slice(0, colon);
    let value = colon === -1 ? '' : line.slice(colon + 1);
    if (value.startsWith(' ')) value = value.slice(1);
    if (field === 'data') this.data.push(value);
    else if (field === 'event') this.event = value;
    else if (field === 'id') this.id = value;
    return null;
  }
}

/** Events of the backend's POST /api/chat stream. */
export type ChatEvent =
  | { type: 'start'; conversationId: number | string; userMessageId: number | string }
  | { type: 'delta'; delta: string }
  | { type: 'done'; conversationId: number | string; messageId: number | string | null }
  | { type: 'error'; error: string };

/** Interprets one SSE data payload of the chat stream; null for anything unrecognised. */
export function parseChatEvent(data: string): ChatEvent | null {
  let obj: unknown;
  try {
    obj = JSON.parse(data);
  } catch {
    return null;
  }
  if (typeof obj !== 'object' || obj === null) return null;
  const o = obj as Record<string, unknown>;
  if (typeof o.error === 'string') return { type: 'error', error: o.error };
  if (o.done === true) {
    const cid = o.conversation_id;
    const mid = o.message_id;
    if (typeof cid !== 'number' && typeof cid !== 'string') return null;
    return {
      type: 'done',
      conversationId: cid,
      messageId: typeof mid === 'number' || typeof mid === 'string' ? mid : null,
    };
  }
  if (typeof o.delta === 'string') return { type: 'delta', delta: o.delta };
  const cid = o.conversation_id;
  const uid = o.user_message_id;
  if ((typeof cid === 'number' || typeof cid === 'string') && (typeof uid === 'number' || typeof uid === 'string')) {
    return { type: 'start', conversationId: cid, userMessageId: uid };
  }
  return null;
}

/** Reads a byte stream (e.g. fetch's response.body) and yields chat events as they arrive. */
export async function* readChatEvents(
  body: ReadableStream<Uint8Array>,
): AsyncGenerator<ChatEvent, void, undefined> {
  const reader = body.getReader();
  const decoder = new TextDecoder();
  const parser = new SSEParser();
  try {
    for (;;) {
      const { done, value } = await reader.read();
      const text = done ? decoder.decode() : decoder.decode(value, { stream: true });
      const msgs = parser.push(text);
      if (done) msgs.push(...parser.flush());
      for (const m of msgs) {
        const ev = parseChatEvent(m.data);
        if (ev) yield ev;
      }
      if (done) return;
    }
  } finally {
    reader.releaseLock();
  }
}
