"""FastAPI dependencies for what `create_app` configures once per application.

Handlers take these with `Depends(...)`, so a test can swap them through
`app.dependency_overrides[get_settings] = lambda: Settings(...)`.
"""
from fastapi import Request
from passlib.context import CryptContext

from .config import Settings
from .throttle import LoginThrottle


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_password_context(request: Request) -> CryptContext:
    return request.app.state.pwd


def get_login_throttle(request: Request) -> LoginThrottle:
    return request.app.state.login_throttle
