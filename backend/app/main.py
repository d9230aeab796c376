"""Application factory; `app.main:app` is what uvicorn serves."""
import logging
from contextlib import asynccontextmanager
from typing import Optional

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from .config import Settings
from .db import Database
from .routers import auth, chat, conversations
from .security import make_password_context

logger = logging.getLogger("app")


def create_app(settings: Optional[Settings] = None) -> FastAPI:
    settings = settings or Settings.from_env()
    db = Database(settings.database_url)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        if settings.uses_dev_secret:
            logger.warning("JWT_SECRET is not set: using an insecure development secret")
        db.create_all()
        yield
        db.dispose()

    app = FastAPI(title="LLM Chat API", version="1.0.0", lifespan=lifespan)
    app.state.settings = settings
    app.state.db = db
    app.state.pwd = make_password_context(settings.bcrypt_rounds)

    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(settings.cors_origins),
            allow_methods=["*"],
            allow_headers=["*"],
        )

    @app.get("/api/health", tags=["health"])
    def health() -> dict:
        return {"status": "ok"}

    app.include_router(auth.router)
    app.include_router(conversations.router)
    app.include_router(chat.router)
    return app


app = create_app()
