"""Settings read from the environment (and a `.env` file, via python-dotenv)."""
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Tuple

from dotenv import load_dotenv

DEV_JWT_SECRET = "dev-insecure-secret-change-me"
# Local default: backend/data/chat.db. Docker sets DATABASE_URL=sqlite:////data/chat.db.
DEFAULT_DATABASE_URL = "sqlite:///" + str(Path(__file__).resolve().parent.parent / "data" / "chat.db")


def _float(name: str, default: float) -> float:
    raw = os.getenv(name)
    return float(raw) if raw not in (None, "") else default


def _int(name: str, default: int) -> int:
    raw = os.getenv(name)
    return int(raw) if raw not in (None, "") else default


@dataclass(frozen=True)
class Settings:
    database_url: str = DEFAULT_DATABASE_URL
    jwt_secret: str = DEV_JWT_SECRET
    jwt_algorithm: str = "HS256"
    jwt_expire_minutes: int = 60 * 24
    bcrypt_rounds: int = 12
    llm_api_base: str = "https://api.openai.com/v1"
    llm_api_key: Optional[str] = None
    llm_model: str = "gpt-4o-mini"
    llm_timeout: float = 60.0
    llm_system_prompt: Optional[str] = None
    cors_origins: Tuple[str, ...] = ()

    @property
    def uses_dev_secret(self) -> bool:
        return self.jwt_secret == DEV_JWT_SECRET

    @classmethod
    def from_env(cls) -> "Settings":
        """Build settings from os.environ; a `.env` file fills in unset variables."""
        load_dotenv()
        origins = tuple(o.strip() for o in os.getenv("CORS_ORIGINS", "").split(",") if o.strip())
        return cls(
            database_url=os.getenv("DATABASE_URL") or DEFAULT_DATABASE_URL,
            jwt_secret=os.getenv("JWT_SECRET") or DEV_JWT_SECRET,
            jwt_expire_minutes=_int("JWT_EXPIRE_MINUTES", cls.jwt_expire_minutes),
            bcrypt_rounds=_int("BCRYPT_ROUNDS", cls.bcrypt_rounds),
            llm_api_base=os.getenv("LLM_API_BASE") or cls.llm_api_base,
            llm_api_key=os.getenv("LLM_API_KEY") or None,
            llm_model=os.getenv("LLM_MODEL") or cls.llm_model,
            llm_timeout=_float("LLM_TIMEOUT", cls.llm_timeout),
            llm_system_prompt=os.getenv("LLM_SYSTEM_PROMPT") or None,
            cors_origins=origins,
        )
