'use client';

import { useCallback, useEffect, useRef, useState, type FormEvent } from 'react';
import { useRouter } from 'next/navigation';
import {
  ApiError,
  deleteConversation,
  getConversation,
  getToken,
  listConversations,
  renameConversation,
  setToken,
  streamChat,
  type ConversationSummary,
  type Message,
} from '@/lib/api';
import { describeChatFailure, type ChatProblem } from '@/lib/chatErrors';
import { Markdown } from '@/components/Markdown';

type Id = number | string;

/** After this long without a first piece of the answer, say that the model is slow. */
const SLOW_AFTER_MS = 8000;

function titleOf(c: ConversationSummary): string {
  return c.title || `Conversation ${c.id}`;
}

function problemOf(err: unknown): ChatProblem {
  if (err instanceof ApiError) {
    return describeChatFailure({ kind: 'http', status: err.status, detail: err.detail });
  }
  if (err instanceof TypeError) return describeChatFailure({ kind: 'network' });
  return { message: err instanceof Error ? err.message : String(err) };
}

// Inline icons: an emoji or icon font may be missing on the reader's machine.
const PencilIcon = () => (
  <svg aria-hidden="true" viewBox="0 0 16 16" width="15" height="15" fill="none" stroke="currentColor" strokeWidth="1.5">
    <path d="M11 2.5l2.5 2.5L5.5 13H3v-2.5z" strokeLinejoin="round" />
  </svg>
);
const TrashIcon = () => (
  <svg aria-hidden="true" viewBox="0 0 16 16" width="15" height="15" fill="none" stroke="currentColor" strokeWidth="1.5">
    <path d="M2.5 4h11M6 4V2.5h4V4M4 4l.8 9.5h6.4L12 4" strokeLinejoin="round" />
  </svg>
);

function ConversationItem({
  conversation,
  active,
  disabled,
  onOpen,
  onRename,
  onDelete,
}: {
  conversation: ConversationSummary;
  active: boolean;
  disabled: boolean;
  onOpen: () => void;
  onRename: (title: string) => Promise<boolean>;
  onDelete: () => Promise<void>;
}) {
  const [mode, setMode] = useState<'view' | 'rename' | 'confirm-delete'>('view');
  const [draft, setDraft] = useState('');
  const title = titleOf(conversation);

  if (mode === 'rename') {
    return (
      <li className="conv editing">
        <form
          onSubmit={async (e) => {
            e.preventDefault();
            if (draft.trim() && (await onRename(draft.trim()))) setMode('view');
          }}
        >
          <input
            aria-label="New title"
            value={draft}
            maxLength={200}
            autoFocus
            onChange={(e) => setDraft(e.target.value)}
            onKeyDown={(e) => e.key === 'Escape' && setMode('view')}
          />
          <div className="row">
            <button type="submit" disabled={!draft.trim()}>
              Save
            </button>
            <button type="button" onClick={() => setMode('view')}>
              Cancel
            </button>
          </div>
        </form>
      </li>
    );
  }
  if (mode === 'confirm-delete') {
    return (
      <li className="conv confirming">
        <span className="confirm-text">Delete “{title}”?</span>
        <div className="row">
          <button type="button" className="danger" onClick={() => onDelete().finally(() => setMode('view'))}>
            Delete
          </button>
          <button type="button" onClick={() => setMode('view')}>
            Cancel
          </button>
        </div>
      </li>
    );
  }
  return (
    <li className={`conv${active ? ' active' : ''}`}>
      <button
        type="button"
        className="conv-title"
        aria-current={active ? 'true' : undefined}
        onClick={onOpen}
        disabled={disabled}
        title={title}
      >
        {title}
      </button>
      <button
        type="button"
        className="icon"
        aria-label={`Rename “${title}”`}
        title="Rename"
        disabled={disabled}
        onClick={() => {
          setDraft(conversation.title);
          setMode('rename');
        }}
      >
        <PencilIcon />
      </button>
      <button
        type="button"
        className="icon"
        aria-label={`Delete “${title}”`}
        title="Delete"
        disabled={disabled}
        onClick={() => setMode('confirm-delete')}
      >
        <TrashIcon />
      </button>
    </li>
  );
}

export default function ChatPage() {
  const router = useRouter();
  const [conversations, setConversations] = useState<ConversationSummary[]>([]);
  const [currentId, setCurrentId] = useState<Id | null>(null);
  const [messages, setMessages] = useState<Message[]>([]);
  const [input, setInput] = useState('');
  const [streaming, setStreaming] = useState(false);
  const [slow, setSlow] = useState(false);
  const [stoppedId, setStoppedId] = useState<Id | null>(null);
  const [problem, setProblem] = useState<ChatProblem | null>(null);
  const [navOpen, setNavOpen] = useState(false);
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
      setProblem(problemOf(err));
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

  const current = conversations.find((c) => c.id === currentId);
  useEffect(() => {
    document.title = current ? `${titleOf(current)} · Chat` : 'Chat';
  }, [current]);

  async function open(id: Id | null) {
    if (streaming) return;
    setProblem(null);
    setStoppedId(null);
    setCurrentId(id);
    setMessages([]);
    setNavOpen(false);
    if (id == null) return;
    try {
      setMessages((await getConversation(id)).messages);
    } catch (err) {
      fail(err);
    }
  }

  async function rename(id: Id, title: string): Promise<boolean> {
    try {
      const updated = await renameConversation(id, title);
      setConversations((list) => list.map((c) => (c.id === id ? { ...c, title: updated.title } : c)));
      return true;
    } catch (err) {
      fail(err);
      return false;
    }
  }

  async function remove(id: Id) {
    try {
      await deleteConversation(id);
    } catch (err) {
      // Already gone is what was asked for.
      if (!(err instanceof ApiError && err.status === 404)) return fail(err);
    }
    setConversations((list) => list.filter((c) => c.id !== id));
    if (id === currentId) {
      setCurrentId(null);
      setMessages([]);
    }
  }

  async function send(e: FormEvent) {
    e.preventDefault();
    const text = input.trim();
    if (!text || streaming) return;
    setInput('');
    setProblem(null);
    setStoppedId(null);
    setStreaming(true);
    setSlow(false);
    const now = new Date().toISOString();
    const replyId = `pending-${Date.now()}`;
    setMessages((m) => [
      ...m,
      { id: `user-${Date.now()}`, role: 'user', content: text, created_at: now },
      { id: replyId, role: 'assistant', content: '', created_at: now },
    ]);
    let received = false;
    const slowTimer = window.setTimeout(() => setSlow(true), SLOW_AFTER_MS);
    const appendToReply = (delta: string) => {
      if (!received) {
        received = true;
        window.clearTimeout(slowTimer);
        setSlow(false);
      }
      setMessages((m) => m.map((x) => (x.id === replyId ? { ...x, content: x.content + delta } : x)));
    };
    const controller = new AbortController();
    abortRef.current = controller;
    try {
      for await (const ev of streamChat(text, currentId, controller.signal)) {
        if (ev.type === 'start') {
          setCurrentId(ev.conversationId);
          refreshList();
        }
        else if (ev.type === 'delta') appendToReply(ev.delta);
        else if (ev.type === 'error') setProblem(describeChatFailure({ kind: 'stream', error: ev.error }));
        else if (ev.type === 'done') {
          setCurrentId(ev.conversationId);
          if (ev.messageId != null) {
            const mid = ev.messageId;
            setMessages((m) => m.map((x) => (x.id === replyId ? { ...x, id: mid } : x)));
          }
        }
      }
    } catch (err) {
      if (controller.signal.aborted) setStoppedId(replyId);
      else fail(err);
    } finally {
      window.clearTimeout(slowTimer);
      abortRef.current = null;
      setStreaming(false);
      setSlow(false);
      // Drop the reply bubble if nothing arrived (error or abort before the first delta).
      setMessages((m) => m.filter((x) => x.id !== replyId || x.content !== ''));
      refreshList();
    }
  }

  function stop() {
    abortRef.current?.abort();
  }

  return (
    <div className={`chat${navOpen ? ' nav-open' : ''}`}>
      <header className="topbar">
        <button
          type="button"
          className="nav-toggle"
          aria-expanded={navOpen}
          aria-controls="conversation-nav"
          onClick={() => setNavOpen((o) => !o)}
        >
          <span aria-hidden="true">☰ </span>Conversations
        </button>
        <span className="topbar-title">{current ? titleOf(current) : 'New chat'}</span>
      </header>
      <aside id="conversation-nav" aria-label="Conversations">
        <div className="row">
          <button type="button" className="new-chat" onClick={() => open(null)} disabled={streaming}>
            + New chat
          </button>
          <button type="button" className="nav-close" aria-label="Close conversations" onClick={() => setNavOpen(false)}>
            ✕
          </button>
        </div>
        <ul>
          {conversations.map((c) => (
            <ConversationItem
              key={c.id}
              conversation={c}
              active={c.id === currentId}
              disabled={streaming}
              onOpen={() => open(c.id)}
              onRename={(title) => rename(c.id, title)}
              onDelete={() => remove(c.id)}
            />
          ))}
        </ul>
        <button type="button" onClick={logout}>
          Log out
        </button>
      </aside>
      {navOpen && <div className="backdrop" aria-hidden="true" onClick={() => setNavOpen(false)} />}
      <main>
        <div className="messages">
          {messages.length === 0 && <p className="hint">Send a message to start.</p>}
          {messages.map((m) => (
            <div key={m.id} className={`msg ${m.role}`} data-role={m.role}>
              {m.role === 'assistant' ? (
                m.content ? (
                  <Markdown text={m.content} />
                ) : (
                  <span className="typing">{streaming ? '…' : ''}</span>
                )
              ) : (
                m.content
              )}
              {m.id === stoppedId && <p className="stopped">Stopped.</p>}
            </div>
          ))}
          {slow && (
            <p className="hint slow" role="status">
              The language model is slow to answer; still waiting… (Stop to give up.)
            </p>
          )}
          <div ref={bottomRef} />
        </div>
        {problem && (
          <div className="error" role="alert">
            <p>{problem.message}</p>
            {problem.detail && <p className="error-detail">Details: {problem.detail}</p>}
          </div>
        )}
        <form onSubmit={send} className="composer">
          <textarea
            value={input}
            aria-label="Message"
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
            <button type="button" className="stop" onClick={stop}>
              <span aria-hidden="true">■ </span>Stop
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
