"""Settings read from the environment (and a `.env` file in the working directory)."""
from pathlib import Path
from typing import Annotated, ClassVar, Optional, Tuple

from pydantic import field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

DEV_JWT_SECRET = "dev-insecure-secret-change-me"
# Every JWT secret value published in the repository (the development default above, the
# old docker-compose default). They are never used to sign tokens: see secret.py.
PUBLISHED_JWT_SECRETS = frozenset({DEV_JWT_SECRET, "change-me-in-production"})
# Local default: backend/data/chat.db. Docker sets DATABASE_URL=sqlite:////data/chat.db.
DEFAULT_DATABASE_URL = "sqlite:///" + str(Path(__file__).resolve().parent.parent / "data" / "chat.db")


class Settings(BaseSettings):
    """Each field is read from the upper-case environment variable of the same name
    (DATABASE_URL, JWT_SECRET, ...); an empty variable counts as unset. Keyword
    arguments take precedence over the environment."""

    model_config = SettingsConfigDict(env_file=".env", env_ignore_empty=True, extra="ignore", frozen=True)

    # Not configurable: a fixed algorithm leaves no room for algorithm-confusion mistakes.
    jwt_algorithm: ClassVar[str] = "HS256"

    database_url: str = DEFAULT_DATABASE_URL
    jwt_secret: str = DEV_JWT_SECRET
    jwt_expire_minutes: int = 60 * 24
    bcrypt_rounds: int = 12
    llm_api_base: str = "https://api.openai.com/v1"
    llm_api_key: Optional[str] = None
    llm_model: str = "gpt-4o-mini"
    llm_timeout: float = 60.0
    llm_system_prompt: Optional[str] = None
    # CORS_ORIGINS is a comma-separated list, not JSON.
    cors_origins: Annotated[Tuple[str, ...], NoDecode] = ()

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _split_origins(cls, value):
        if isinstance(value, str):
            return tuple(o.strip() for o in value.split(",") if o.strip())
        return value

    @property
    def uses_dev_secret(self) -> bool:
        return self.jwt_secret == DEV_JWT_SECRET

    @property
    def uses_published_secret(self) -> bool:
        """True for an empty secret or one anybody can read in the repository."""
        return not self.jwt_secret or self.jwt_secret in PUBLISHED_JWT_SECRETS

    @classmethod
    def from_env(cls) -> "Settings":
        """Settings from os.environ; a `.env` file fills in unset variables."""
        return cls()
