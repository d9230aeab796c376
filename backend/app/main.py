"""Application factory; `app.main:app` is what uvicorn serves."""
from contextlib import asynccontextmanager
from typing import Optional

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from .config import Settings
from .db import Database
from .routers import auth, chat, conversations
from .secret import with_private_secret
from .security import make_password_context
from .throttle import LoginThrottle


def create_app(settings: Optional[Settings] = None) -> FastAPI:
    settings = settings or Settings.from_env()
    db = Database(settings.database_url)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        db.create_all()
        # At startup, not in create_app: importing app.main must not write files.
        app.state.settings = with_private_secret(settings, db.data_dir)
        yield
        db.dispose()

    app = FastAPI(title="LLM Chat API", version="1.0.0", lifespan=lifespan)
    app.state.settings = settings
    app.state.db = db
    app.state.pwd = make_password_context(settings.bcrypt_rounds)
    app.state.login_throttle = LoginThrottle()

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
