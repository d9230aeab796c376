"""SQLAlchemy 2.0 engine / session handling."""
from pathlib import Path
from typing import Iterator, Optional

from fastapi import Request
from sqlalchemy import create_engine
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

from .models import Base


class Database:
    def __init__(self, url: str) -> None:
        parsed = make_url(url)
        connect_args = {}
        self._sqlite_file = None
        if parsed.get_backend_name() == "sqlite":
            # FastAPI runs sync endpoints in a thread pool.
            connect_args["check_same_thread"] = False
            if parsed.database and parsed.database != ":memory:":
                self._sqlite_file = Path(parsed.database)
        self.engine = create_engine(url, connect_args=connect_args)
        self.session = sessionmaker(bind=self.engine, expire_on_commit=False)

    @property
    def data_dir(self) -> Optional[Path]:
        """The directory of the SQLite database file, if the database is one."""
        return self._sqlite_file.parent if self._sqlite_file is not None else None

    def create_all(self) -> None:
        if self._sqlite_file is not None:
            self._sqlite_file.parent.mkdir(parents=True, exist_ok=True)
        Base.metadata.create_all(self.engine)

    def dispose(self) -> None:
        self.engine.dispose()


def get_db(request: Request) -> Iterator[Session]:
    """FastAPI dependency: one session per request."""
    session = request.app.state.db.session()
    try:
        yield session
    finally:
        session.close()
