"""POST /api/chat: send a message, stream the LLM's answer back as server-sent events.

Events (each `data: <json>\n\n`):
  {"conversation_id": N, "user_message_id": M}   first, once the user message is stored
  {"delta": "..."}                                 pieces of the answer
  {"done": true, "message_id": K, "conversation_id": N}   the stored assistant message
  {"error": "...", "conversation_id": N}           the stream failed; nothing more follows
Failures known before streaming starts are plain JSON errors instead (404, 502, 504).
"""
import json
import logging
from typing import AsyncIterator, Dict, List, Optional, Tuple

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from ..config import Settings
from ..db import Database
from ..deps import get_settings
from ..llm import LLMError, LLMStream, LLMStreamError, open_stream
from ..models import Conversation, Message, User, utcnow
from ..schemas import ChatIn
from ..security import get_current_user
from .conversations import get_owned_conversation

logger = logging.getLogger("app.chat")
router = APIRouter(prefix="/api", tags=["chat"])

TITLE_LENGTH = 60


def _history(db: Database, user_id: int, conversation_id: Optional[int]) -> List[Dict[str, str]]:
    if conversation_id is None:
        return []
    with db.session() as session:
        conversation = get_owned_conversation(session, user_id, conversation_id, with_messages=True)
        return [{"role": m.role, "content": m.content} for m in conversation.messages]


def _store_user_message(
    db: Database, user_id: int, conversation_id: Optional[int], text: str
) -> Tuple[int, int]:
    with db.session() as session:
        if conversation_id is None:
            title = " ".join(text.split())[:TITLE_LENGTH] or "New chat"
            conversation = Conversation(user_id=user_id, title=title)
            session.add(conversation)
        else:
            conversation = get_owned_conversation(session, user_id, conversation_id)
            conversation.updated_at = utcnow()
        message = Message(conversation=conversation, role="user", content=text)
        session.add(message)
        session.commit()
        return conversation.id, message.id


def _store_assistant_message(db: Database, conversation_id: int, text: str) -> int:
    with db.session() as session:
        conversation = session.get(Conversation, conversation_id)
        if conversation is None:  # deleted while the answer streamed
            raise LookupError("conversation was deleted")
        conversation.updated_at = utcnow()
        message = Message(conversation=conversation, role="assistant", content=text)
        session.add(message)
        session.commit()
        return message.id


def _sse(payload: dict) -> str:
    return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"


async def _events(
    db: Database, upstream: LLMStream, conversation_id: int, user_message_id: int
) -> AsyncIterator[str]:
    try:
        yield _sse({"conversation_id": conversation_id, "user_message_id": user_message_id})
        parts = []
        async for delta in upstream.deltas():
            parts.append(delta)
            yield _sse({"delta": delta})
        message_id = await run_in_threadpool(
            _store_assistant_message, db, conversation_id, "".join(parts)
        )
        yield _sse({"done": True, "message_id": message_id, "conversation_id": conversation_id})
    except LLMStreamError as exc:
        logger.warning("chat stream failed: %s", exc)
        yield _sse({"error": str(exc), "conversation_id": conversation_id})
    except Exception:
        logger.exception("chat stream failed")
        yield _sse({"error": "Internal error while streaming", "conversation_id": conversation_id})
    finally:
        await upstream.aclose()


@router.post(
    "/chat",
    response_class=StreamingResponse,
    responses={
        200: {"content": {"text/event-stream": {}}, "description": "Server-sent events"},
        404: {"description": "Unknown conversation"},
        502: {"description": "LLM endpoint unreachable or failing"},
        504: {"description": "LLM endpoint timed out"},
    },
)
async def chat(
    body: ChatIn,
    request: Request,
    user: User = Depends(get_current_user),
    settings: Settings = Depends(get_settings),
):
    db: Database = request.app.state.db
    user_id = user.id

    messages = await run_in_threadpool(_history, db, user_id, body.conversation_id)
    messages.append({"role": "user", "content": body.message})
    if settings.llm_system_prompt:
        messages.insert(0, {"role": "system", "content": settings.llm_system_prompt})

    # Open the upstream stream first: a failing endpoint becomes a JSON error and
    # nothing is stored.
    try:
        upstream = await open_stream(settings, messages)
    except LLMError as exc:
        logger.warning("LLM request failed: %s", exc.detail)
        raise HTTPException(exc.status_code, exc.detail) from None

    try:
        conversation_id, user_message_id = await run_in_threadpool(
            _store_user_message, db, user_id, body.conversation_id, body.message
        )
    except BaseException:
        await upstream.aclose()
        raise

    return StreamingResponse(
        _events(db, upstream, conversation_id, user_message_id),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
