"""A default deployment never signs with a secret published in the repository."""
import re
import shutil
import stat
import subprocess
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from jose import jwt

from app.config import PUBLISHED_JWT_SECRETS, Settings
from app.main import create_app
from app.secret import SECRET_FILE

REPO = Path(__file__).resolve().parents[2]
# Published values plus the ones the tests themselves use.
KNOWN_SECRETS = sorted(PUBLISHED_JWT_SECRETS | {"test-secret", "another-secret", "s3cret"})


def start(data_dir: Path, **settings) -> TestClient:
    """An app as a deployment runs it: only DATABASE_URL set, unless told otherwise."""
    app = create_app(Settings(database_url=f"sqlite:///{data_dir / 'chat.db'}", bcrypt_rounds=4, **settings))
    return TestClient(app)


def token_for(secret: str, user_id: int) -> str:
    exp = datetime.now(timezone.utc) + timedelta(hours=1)
    return jwt.encode({"sub": str(user_id), "exp": exp}, secret, "HS256")


def me(client: TestClient, token: str) -> int:
    return client.get("/api/auth/me", headers={"Authorization": f"Bearer {token}"}).status_code


@pytest.mark.parametrize("configured", [None, "", *sorted(PUBLISHED_JWT_SECRETS)])
def test_tokens_signed_with_known_secrets_are_refused(tmp_path, monkeypatch, configured):
    if configured is not None:
        monkeypatch.setenv("JWT_SECRET", configured)  # e.g. the old compose default
    with start(tmp_path) as client:
        registered = client.post("/api/auth/register", json={"username": "alice", "password": "secret-pass"})
        user_id = registered.json()["user"]["id"]
        assert me(client, registered.json()["access_token"]) == 200
        for secret in KNOWN_SECRETS:
            assert me(client, token_for(secret, user_id)) == 401, secret
        assert client.app.state.settings.jwt_secret not in KNOWN_SECRETS


def test_generated_secret_is_private_and_survives_a_restart(tmp_path, caplog):
    with start(tmp_path) as client:
        token = client.post(
            "/api/auth/register", json={"username": "alice", "password": "secret-pass"}
        ).json()["access_token"]
    secret_file = tmp_path / SECRET_FILE
    assert stat.S_IMODE(secret_file.stat().st_mode) == 0o600
    assert len(secret_file.read_text().strip()) >= 32
    assert "generated secret kept in" in caplog.text

    with start(tmp_path) as restarted:  # same data directory: same secret
        assert me(restarted, token) == 200

    other = tmp_path / "other"
    other.mkdir()
    shutil.copy(tmp_path / "chat.db", other / "chat.db")
    with start(other) as elsewhere:  # same users, but a secret of its own
        assert me(elsewhere, token) == 401


def test_a_private_secret_is_used_as_given(tmp_path):
    with start(tmp_path, jwt_secret="a-private-secret-set-by-the-operator") as client:
        assert client.app.state.settings.jwt_secret == "a-private-secret-set-by-the-operator"
    assert not (tmp_path / SECRET_FILE).exists()


def test_no_place_for_a_generated_secret_refuses_to_start():
    app = create_app(Settings(database_url="sqlite://", bcrypt_rounds=4))  # in-memory database
    with pytest.raises(RuntimeError, match="set JWT_SECRET"):
        with TestClient(app):
            pass


def test_every_jwt_secret_default_in_the_repository_is_known():
    """Compose files, docs and examples: a value or default given to JWT_SECRET anywhere in
    the repository must be in PUBLISHED_JWT_SECRETS (so a deployment copying it is not trusted)."""
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("needs the git checkout")
    lines = subprocess.run(
        ["git", "grep", "-h", "-I", "-E", "JWT_SECRET(:-|=)"], cwd=REPO, capture_output=True, text=True
    ).stdout
    values = set(re.findall(r"JWT_SECRET(?::-|=)([^}\"'`\s]*)", lines))
    values = {v for v in values if v and not v.startswith("$")}  # `${JWT_SECRET:-}`, `=$(...)`
    assert values <= PUBLISHED_JWT_SECRETS
