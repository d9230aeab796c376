"""The JWT signing secret: never one published in the repository.

When JWT_SECRET is unset, empty or a published value, a random secret is generated
on first start and kept in the data directory (next to the SQLite database, i.e. in
the Docker volume), so tokens survive restarts.
"""
import logging
import os
import secrets
import tempfile
from pathlib import Path
from typing import Optional

from .config import Settings

logger = logging.getLogger("app")

SECRET_FILE = "jwt_secret"


def load_or_create_secret(path: Path) -> str:
    """The secret stored at `path`; on first use, a new random one written there (mode 0600)."""
    if not path.exists():
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".jwt_secret.")  # mode 0600
        try:
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_urlsafe(48) + "\n")
            os.link(tmp, path)  # atomic, and never replaces a secret another process wrote first
        except FileExistsError:
            pass
        finally:
            os.unlink(tmp)
    secret = path.read_text().strip()
    if not secret:
        raise RuntimeError(f"{path} is empty: delete it to generate a new JWT secret, or set JWT_SECRET")
    return secret


def with_private_secret(settings: Settings, data_dir: Optional[Path]) -> Settings:
    """`settings` unchanged if its secret is private; else with the generated one from `data_dir`."""
    if not settings.uses_published_secret:
        return settings
    if data_dir is None:
        raise RuntimeError(
            "JWT_SECRET is not set (or is a value published in the repository) and the database "
            "is not a SQLite file whose directory could keep a generated one: set JWT_SECRET to a "
            "long random value, e.g. the output of "
            "`python3 -c 'import secrets; print(secrets.token_urlsafe(48))'`"
        )
    path = data_dir / SECRET_FILE
    secret = load_or_create_secret(path)
    logger.warning(
        "JWT_SECRET is not set (or is a value published in the repository): signing tokens with "
        "the generated secret kept in %s",
        path,
    )
    return settings.model_copy(update={"jwt_secret": secret})
