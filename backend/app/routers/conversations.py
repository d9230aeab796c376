"""GET/POST /api/conversations, GET/PATCH/DELETE /api/conversations/{id}."""
from typing import List, Optional

from fastapi import APIRouter, Depends, HTTPException, Response, status
from sqlalchemy import select
from sqlalchemy.orm import Session, selectinload

from ..db import get_db
from ..models import Conversation, User
from ..schemas import ConversationCreate, ConversationDetail, ConversationOut, ConversationRename
from ..security import get_current_user

router = APIRouter(prefix="/api/conversations", tags=["conversations"])

DEFAULT_TITLE = "New chat"


def get_owned_conversation(
    db: Session, user_id: int, conversation_id: int, with_messages: bool = False
) -> Conversation:
    """The user's conversation, or 404 (also for other users' conversations)."""
    query = select(Conversation).where(
        Conversation.id == conversation_id, Conversation.user_id == user_id
    )
    if with_messages:
        query = query.options(selectinload(Conversation.messages))
    conversation = db.scalar(query)
    if conversation is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "Conversation not found")
    return conversation


@router.get("", response_model=List[ConversationOut])
def list_conversations(
    user: User = Depends(get_current_user), db: Session = Depends(get_db)
) -> List[Conversation]:
    query = (
        select(Conversation)
        .where(Conversation.user_id == user.id)
        .order_by(Conversation.updated_at.desc(), Conversation.id.desc())
    )
    return list(db.scalars(query))


@router.post("", response_model=ConversationOut, status_code=status.HTTP_201_CREATED)
def create_conversation(
    body: Optional[ConversationCreate] = None,
    user: User = Depends(get_current_user),
    db: Session = Depends(get_db),
) -> Conversation:
    title = body.title if body is not None and body.title else DEFAULT_TITLE
    conversation = Conversation(user_id=user.id, title=title)
    db.add(conversation)
    db.commit()
    return conversation


@router.get("/{conversation_id}", response_model=ConversationDetail)
def get_conversation(
    conversation_id: int, user: User = Depends(get_current_user), db: Session = Depends(get_db)
) -> Conversation:
    return get_owned_conversation(db, user.id, conversation_id, with_messages=True)


@router.patch("/{conversation_id}", response_model=ConversationOut)
def rename_conversation(
    conversation_id: int,
    body: ConversationRename,
    user: User = Depends(get_current_user),
    db: Session = Depends(get_db),
) -> Conversation:
    conversation = get_owned_conversation(db, user.id, conversation_id)
    conversation.title = body.title
    db.commit()
    return conversation


@router.delete("/{conversation_id}", status_code=status.HTTP_204_NO_CONTENT)
def delete_conversation(
    conversation_id: int, user: User = Depends(get_current_user), db: Session = Depends(get_db)
) -> Response:
    db.delete(get_owned_conversation(db, user.id, conversation_id))
    db.commit()
    return Response(status_code=status.HTTP_204_NO_CONTENT)
