"""Handlers take settings and the password context as dependencies, so tests can swap them."""
from passlib.context import CryptContext

from app.deps import get_password_context, get_settings
from app.models import User

from .conftest import register, sse_events


def test_settings_can_be_overridden(client, auth, fake_llm):
    app = client.app
    changed = app.state.settings.model_copy(update={"llm_model": "override-model"})
    app.dependency_overrides[get_settings] = lambda: changed
    try:
        response = client.post("/api/chat", json={"message": "hi"}, headers=auth)
    finally:
        app.dependency_overrides.clear()
    assert sse_events(response.text)[-1]["done"] is True
    assert fake_llm.requests[-1]["json"]["model"] == "override-model"


def test_password_context_can_be_overridden(client):
    app = client.app
    app.dependency_overrides[get_password_context] = lambda: CryptContext(schemes=["sha256_crypt"])
    try:
        register(client, "carol", "carol-password")
        login = client.post("/api/auth/login", json={"username": "carol", "password": "carol-password"})
    finally:
        app.dependency_overrides.clear()
    assert login.status_code == 200
    with app.state.db.session() as session:
        assert session.query(User).one().password_hash.startswith("$5$")  # sha256_crypt, not bcrypt


def test_models_do_not_import_db():
    """`db.py` imports the models (for Base); the models never import `db.py`."""
    import subprocess
    import sys
    from pathlib import Path

    code = "import sys, app.models; assert 'app.db' not in sys.modules, sorted(sys.modules)"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parent.parent)
