// Turns the backend's chat failures into sentences for people. Pure: unit tested in
// test/chatErrors.test.ts.
//
// What the backend sends (backend/app/routers/chat.py, backend/app/llm.py):
//   before streaming, a JSON error {"detail": ...}:
//     502 "LLM endpoint unreachable: ConnectError"       the LLM server is down
//     502 "LLM endpoint returned HTTP 500: ..."            the LLM server failed
//     504 "LLM endpoint did not respond in time"           the LLM server is too slow
//   while streaming, an event {"error": "LLM stream interrupted: ..."} or
//     {"error": "LLM endpoint error: ..."} or {"error": "Internal error while streaming"}.
// A 502/504 without a JSON detail comes from the proxy in front: the backend is down.

export interface ChatProblem {
  /** What happened, in plain words. */
  message: string;
  /** The technical detail the server gave, if any, to show in small print. */
  detail?: string;
}

export type ChatFailure =
  | { kind: 'http'; status: number; detail: string | null }
  | { kind: 'stream'; error: string }
  | { kind: 'network' };

const TRY_AGAIN = 'Try again in a moment.';

export function describeChatFailure(f: ChatFailure): ChatProblem {
  if (f.kind === 'network') {
    return { message: 'Cannot reach the server. Check your connection and try again.' };
  }
  if (f.kind === 'stream') {
    const detail = f.error;
    if (/^LLM stream interrupted/i.test(detail)) {
      return { message: `The answer was cut off: the connection to the language model was lost. ${TRY_AGAIN}`, detail };
    }
    if (/^LLM endpoint/i.test(detail)) {
      return { message: `The language model reported an error while answering. ${TRY_AGAIN}`, detail };
    }
    return { message: `The answer could not be completed. ${TRY_AGAIN}`, detail };
  }
  const { status, detail } = f;
  const fromLLM = detail != null && /^LLM endpoint/i.test(detail);
  if (status === 504 && fromLLM) {
    return { message: `The language model is taking too long to answer. ${TRY_AGAIN}`, detail };
  }
  if (status === 502 && fromLLM && /unreachable/i.test(detail)) {
    return { message: 'The language model service is not reachable right now. Try again later.', detail };
  }
  if (status === 502 && fromLLM) {
    return { message: `The language model service answered with an error. ${TRY_AGAIN}`, detail };
  }
  if ((status === 502 || status === 503 || status === 504) && detail == null) {
    return { message: `The chat server is not available right now (HTTP ${status}). ${TRY_AGAIN}` };
  }
  if (status === 404) {
    return { message: 'This conversation no longer exists. Start a new chat.', detail: detail ?? undefined };
  }
  if (status === 429) {
    return { message: `Too many requests. ${TRY_AGAIN}`, detail: detail ?? undefined };
  }
  return {
    message: detail ?? `The request failed (HTTP ${status}).`,
  };
}
