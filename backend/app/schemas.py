"""Request / response bodies."""
from datetime import datetime, timezone
from typing import Annotated, List, Optional

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints


def _as_utc(value: datetime) -> datetime:
    # SQLite drops the time zone; everything is stored in UTC.
    return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value


UTCDateTime = Annotated[datetime, AfterValidator(_as_utc)]
Username = Annotated[
    str, StringConstraints(strip_whitespace=True, to_lower=True, pattern=r"^[A-Za-z0-9_.-]{3,32}$")
]
Password = Annotated[str, StringConstraints(min_length=8, max_length=72)]


class Credentials(BaseModel):
    username: Username = Field(description="3-32 chars of letters, digits, _ . -; case-insensitive")
    password: Password


class UserOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    username: str
    created_at: UTCDateTime


class TokenOut(BaseModel):
    access_token: str
    token_type: str = "bearer"
    user: UserOut


class ConversationCreate(BaseModel):
    title: Optional[Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)]] = None


class ConversationRename(BaseModel):
    title: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)]


class ConversationOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    title: str
    created_at: UTCDateTime
    updated_at: UTCDateTime


class MessageOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    role: str
    content: str
    created_at: UTCDateTime


class ConversationDetail(ConversationOut):
    messages: List[MessageOut]


class ChatIn(BaseModel):
    conversation_id: Optional[int] = Field(default=None, description="omit to start a new conversation")
    message: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=32000)]
