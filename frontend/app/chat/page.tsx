'use client';

import { useCallback, useEffect, useRef, useState, type FormEvent } from 'react';
import { useRouter } from 'next/navigation';
import {
  ApiError,
  getConversation,
  getToken,
  listConversations,
  setToken,
  streamChat,
  type ConversationSummary,
  type Message,
} from '@/lib/api';

type Id = number | string;

export default function ChatPage() {
  const router = useRouter();
  const [conversations, setConversations] = useState<ConversationSummary[]>([]);
  const [currentId, setCurrentId] = useState<Id | null>(null);
  const [messages, setMessages] = useState<Message[]>([]);
  const [input, setInput] = useState('');
  const [streaming, setStreaming] = useState(false);
  const [error, setError] = useState<string | null>(null);
  const abortRef = useRef<AbortController | null>(null);
  const bottomRef = useRef<HTMLDivElement>(null);

  const logout = useCallback(() => {
    abortRef.current?.abort();
    setToken(null);
    router.replace('/');
  }, [router]);

  const fail = useCallback(
    (err: unknown) => {
      if (err instanceof ApiError && err.status === 401) return logout();
      if (err instanceof DOMException && err.name === 'AbortError') return;
      setError(err instanceof Error ? err.message : String(err));
    },
    [logout],
  );

  const refreshList = useCallback(
    () => listConversations().then(setConversations).catch(fail),
    [fail],
  );

  useEffect(() => {
    if (!getToken()) router.replace('/');
    else refreshList();
  }, [router, refreshList]);

  useEffect(() => {
    bottomRef.current?.scrollIntoView({ block: 'end' });
  }, [messages]);

  async function open(id: Id | null) {
    if (streaming) return;
    setError(null);
    setCurrentId(id);
    setMessages([]);
    if (id == null) return;
    try {
      setMessages((await getConversation(id)).messages);
    } catch (err) {
      fail(err);
    }
  }

  async function send(e: FormEvent) {
    e.preventDefault();
    const text = input.trim();
    if (!text || streaming) return;
    setInput('');
    setError(null);
    setStreaming(true);
    const now = new Date().toISOString();
    const replyId = `pending-${Date.now()}`;
    setMessages((m) => [
      ...m,
      { id: `user-${Date.now()}`, role: 'user', content: text, created_at: now },
      { id: replyId, role: 'assistant', content: '', created_at: now },
    ]);
    const appendToReply = (delta: string) =>
      setMessages((m) => m.map((x) => (x.id === replyId ? { ...x, content: x.content + delta } : x)));
    const controller = new AbortController();
    abortRef.current = controller;
    try {
      for await (const ev of streamChat(text, currentId, controller.signal)) {
        if (ev.type === 'delta') appendToReply(ev.delta);
        else if (ev.type === 'error') setError(ev.error);
        else if (ev.type === 'done') {
          setCurrentId(ev.conversationId);
          if (ev.messageId != null) {
            const mid = ev.messageId;
            setMessages((m) => m.map((x) => (x.id === replyId ? { ...x, id: mid } : x)));
          }
        }
      }
      refreshList();
    } catch (err) {
      fail(err);
    } finally {
      abortRef.current = null;
      setStreaming(false);
      // Drop the reply bubble if nothing arrived (error or abort before the first delta).
      setMessages((m) => m.filter((x) => x.id !== replyId || x.content !== ''));
    }
  }

  return (
    <div className="chat">
      <aside>
        <button onClick={() => open(null)} disabled={streaming}>
          + New chat
        </button>
        <ul>
          {conversations.map((c) => (
            <li key={c.id}>
              <button
                className={c.id === currentId ? 'active' : undefined}
                onClick={() => open(c.id)}
                disabled={streaming}
              >
                {c.title || `Conversation ${c.id}`}
              </button>
            </li>
          ))}
        </ul>
        <button onClick={logout}>Log out</button>
      </aside>
      <main>
        <div className="messages">
          {messages.length === 0 && <p className="hint">Send a message to start.</p>}
          {messages.map((m) => (
            <div key={m.id} className={`msg ${m.role}`}>
              {m.content || (streaming && m.role === 'assistant' ? '…' : '')}
            </div>
          ))}
          <div ref={bottomRef} />
        </div>
        {error && <p className="error" role="alert">{error}</p>}
        <form onSubmit={send}>
          <textarea
            value={input}
            placeholder="Type a message"
            onChange={(e) => setInput(e.target.value)}
            onKeyDown={(e) => {
              if (e.key === 'Enter' && !e.shiftKey) {
                e.preventDefault();
                e.currentTarget.form?.requestSubmit();
              }
            }}
            rows={3}
          />
          {streaming ? (
            <button type="button" onClick={() => abortRef.current?.abort()}>
              Stop
            </button>
          ) : (
            <button type="submit" disabled={!input.trim()}>
              Send
            </button>
          )}
        </form>
      </main>
    </div>
  );
}
