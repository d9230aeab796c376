import json
import socket
from typing import Callable, Dict, Iterator, List

import pytest
from fastapi.testclient import TestClient

from app.config import Settings
from app.main import create_app

from .fake_llm import FakeLLM


@pytest.fixture(autouse=True)
def isolated_settings(monkeypatch, tmp_path) -> None:
    """Settings(...) also reads the environment and `./.env`: keep the developer's out."""
    for name in Settings.model_fields:
        monkeypatch.delenv(name.upper(), raising=False)
    monkeypatch.chdir(tmp_path)


@pytest.fixture(scope="session")
def fake_llm_server() -> Iterator[FakeLLM]:
    server = FakeLLM().start()
    yield server
    server.stop()


@pytest.fixture
def fake_llm(fake_llm_server: FakeLLM) -> FakeLLM:
    fake_llm_server.mode = "ok"
    fake_llm_server.requests.clear()
    return fake_llm_server


@pytest.fixture
def closed_port_url() -> str:
    """A URL on 127.0.0.1 where nothing listens (connection refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"


@pytest.fixture
def make_client(tmp_path, fake_llm: FakeLLM) -> Iterator[Callable[..., TestClient]]:
    """Build an app on a fresh SQLite file; keyword arguments override Settings."""
    clients = []

    def factory(**overrides) -> TestClient:
        values = dict(
            database_url=f"sqlite:///{tmp_path / 'data' / 'test.db'}",
            jwt_secret="test-secret",
            bcrypt_rounds=4,  # fast hashes for tests
            llm_api_base=fake_llm.base_url,
            llm_api_key="sk-test",
            llm_model="test-model",
            llm_timeout=5.0,
        )
        values.update(overrides)
        client = TestClient(create_app(Settings(**values)))
        client.__enter__()  # run the lifespan (creates the tables)
        clients.append(client)
        return client

    yield factory
    for client in clients:
        client.__exit__(None, None, None)


@pytest.fixture
def client(make_client) -> TestClient:
    return make_client()


def register(client: TestClient, username: str = "alice", password: str = "secret-pass") -> Dict[str, str]:
    """Register a user; returns the Authorization header."""
    response = client.post("/api/auth/register", json={"username": username, "password": password})
    assert response.status_code == 201, response.text
    return {"Authorization": f"Bearer {response.json()['access_token']}"}


@pytest.fixture
def auth(client: TestClient) -> Dict[str, str]:
    return register(client)


def sse_events(text: str) -> List[dict]:
    events = []
    for block in text.split("\n\n"):
        data = [line[len("data: "):] for line in block.splitlines() if line.startswith("data: ")]
        if data:
            events.append(json.loads("\n".join(data)))
    return events
