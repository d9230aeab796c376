// Thin client for the backend's /api endpoints (same origin; nginx proxies /api/ to the backend).
import { readChatEvents, type ChatEvent } from './sse';

const TOKEN_KEY = 'chat.token';

export interface ConversationSummary {
  id: number | string;
  title: string;
}

export interface Message {
  id: number | string;
  role: 'user' | 'assistant' | 'system' | string;
  content: string;
  created_at?: string;
}

export interface Conversation extends ConversationSummary {
  messages: Message[];
}

export class ApiError extends Error {
  constructor(
    public status: number,
    message: string,
    /** The backend's JSON `detail`; null when the body was not the backend's JSON (a proxy's error page). */
    public detail: string | null = null,
  ) {
    super(message);
  }
}

export function getToken(): string | null {
  return typeof window === 'undefined' ? null : window.localStorage.getItem(TOKEN_KEY);
}

export function setToken(token: string | null): void {
  if (token) window.localStorage.setItem(TOKEN_KEY, token);
  else window.localStorage.removeItem(TOKEN_KEY);
}

async function errorOf(res: Response): Promise<ApiError> {
  let detail: string | null = null;
  try {
    const body = await res.json();
    if (typeof body?.detail === 'string') detail = body.detail;
    else if (body?.detail) detail = JSON.stringify(body.detail);
  } catch {
    /* not JSON */
  }
  return new ApiError(res.status, detail ?? (res.statusText || `HTTP ${res.status}`), detail);
}

async function request<T>(path: string, init: RequestInit = {}): Promise<T> {
  const headers = new Headers(init.headers);
  const token = getToken();
  if (token) headers.set('Authorization', `Bearer ${token}`);
  if (init.body) headers.set('Content-Type', 'application/json');
  const res = await fetch(path, { ...init, headers });
  if (!res.ok) throw await errorOf(res);
  if (res.status === 204) return undefined as T;
  return (await res.json()) as T;
}

export async function authenticate(
  mode: 'login' | 'register',
  username: string,
  password: string,
): Promise<void> {
  const { access_token } = await request<{ access_token: string; token_type: string }>(
    `/api/auth/${mode}`,
    { method: 'POST', body: JSON.stringify({ username, password }) },
  );
  setToken(access_token);
}

export const listConversations = () => request<ConversationSummary[]>('/api/conversations');

export const getConversation = (id: number | string) =>
  request<Conversation>(`/api/conversations/${encodeURIComponent(String(id))}`);

export const renameConversation = (id: number | string, title: string) =>
  request<ConversationSummary>(`/api/conversations/${encodeURIComponent(String(id))}`, {
    method: 'PATCH',
    body: JSON.stringify({ title }),
  });

export const deleteConversation = (id: number | string) =>
  request<void>(`/api/conversations/${encodeURIComponent(String(id))}`, { method: 'DELETE' });

/** POST /api/chat and yield the streamed events as they arrive. */
export async function* streamChat(
  message: string,
  conversationId: number | string | null,
  signal?: AbortSignal,
): AsyncGenerator<ChatEvent, void, undefined> {
  const headers: Record<string, string> = {
    'Content-Type': 'application/json',
    Accept: 'text/event-stream',
  };
  const token = getToken();
  if (token) headers.Authorization = `Bearer ${token}`;
  const body = conversationId == null ? { message } : { conversation_id: conversationId, message };
  const res = await fetch('/api/chat', {
    method: 'POST',
    headers,
    body: JSON.stringify(body),
    signal,
  });
  if (!res.ok) throw await errorOf(res);
  if (!res.body) throw new ApiError(0, 'The response has no body to stream');
  yield* readChatEvents(res.body);
}
