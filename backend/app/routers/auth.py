"""POST /api/auth/register, POST /api/auth/login (JSON body), GET /api/auth/me."""
from fastapi import APIRouter, Depends, HTTPException, Request, status
from passlib.context import CryptContext
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from ..config import Settings
from ..db import get_db
from ..deps import get_login_throttle, get_password_context, get_settings
from ..models import User
from ..schemas import Credentials, TokenOut, UserOut
from ..security import create_access_token, get_current_user
from ..throttle import LoginThrottle, client_address

router = APIRouter(prefix="/api/auth", tags=["auth"])


def _token_response(settings: Settings, user: User) -> TokenOut:
    token = create_access_token(settings, user.id)
    return TokenOut(access_token=token, user=UserOut.model_validate(user))


@router.post("/register", response_model=TokenOut, status_code=status.HTTP_201_CREATED)
def register(
    body: Credentials,
    db: Session = Depends(get_db),
    settings: Settings = Depends(get_settings),
    pwd: CryptContext = Depends(get_password_context),
) -> TokenOut:
    if db.scalar(select(User.id).where(User.username == body.username)) is not None:
        raise HTTPException(status.HTTP_409_CONFLICT, "Username already taken")
    user = User(username=body.username, password_hash=pwd.hash(body.password))
    db.add(user)
    try:
        db.commit()
    except IntegrityError:  # lost a race with a concurrent registration
        db.rollback()
        raise HTTPException(status.HTTP_409_CONFLICT, "Username already taken") from None
    return _token_response(settings, user)


@router.post("/login", response_model=TokenOut, responses={429: {"description": "Too many failed logins"}})
def login(
    body: Credentials,
    request: Request,
    db: Session = Depends(get_db),
    settings: Settings = Depends(get_settings),
    pwd: CryptContext = Depends(get_password_context),
    throttle: LoginThrottle = Depends(get_login_throttle),
) -> TokenOut:
    user_key, address_key = f"user:{body.username}", f"address:{client_address(request)}"
    # Checked before the password: a blocked guesser learns nothing, not even a right guess.
    wait = throttle.retry_after(user_key, address_key)
    if wait:
        raise HTTPException(
            status.HTTP_429_TOO_MANY_REQUESTS,
            "Too many failed logins, try again later",
            headers={"Retry-After": str(wait)},
        )
    user = db.scalar(select(User).where(User.username == body.username))
    if user is None:
        pwd.dummy_verify()  # same cost as a real check: no user-enumeration by timing
    if user is None or not pwd.verify(body.password, user.password_hash):
        throttle.failed(user_key, address_key)
        raise _bad_credentials()
    # Only the user's count: a success must not clear its address's count, or an attacker
    # could log in to an account of their own between guesses.
    throttle.succeeded(user_key)
    return _token_response(settings, user)


def _bad_credentials() -> HTTPException:
    return HTTPException(
        status.HTTP_401_UNAUTHORIZED,
        "Incorrect username or password",
        headers={"WWW-Authenticate": "Bearer"},
    )


@router.get("/me", response_model=UserOut)
def me(user: User = Depends(get_current_user)) -> User:
    return user
