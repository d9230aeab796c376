from datetime import datetime, timedelta, timezone

from jose import jwt

from .conftest import register


def test_health_needs_no_llm(make_client, closed_port_url):
    client = make_client(llm_api_base=closed_port_url)
    response = client.get("/api/health")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


def test_register_returns_token_and_user(client):
    response = client.post("/api/auth/register", json={"username": " Alice ", "password": "secret-pass"})
    assert response.status_code == 201
    body = response.json()
    assert body["token_type"] == "bearer"
    assert body["user"]["username"] == "alice"
    assert body["user"]["created_at"].endswith("Z") or "+00:00" in body["user"]["created_at"]

    me = client.get("/api/auth/me", headers={"Authorization": f"Bearer {body['access_token']}"})
    assert me.status_code == 200
    assert me.json()["id"] == body["user"]["id"]


def test_password_is_stored_as_bcrypt_hash(client):
    register(client)
    from app.models import User

    with client.app.state.db.session() as session:
        user = session.query(User).one()
    assert user.password_hash.startswith("$2b$")
    assert "secret-pass" not in user.password_hash


def test_duplicate_username_is_409(client):
    register(client, "alice")
    response = client.post("/api/auth/register", json={"username": "ALICE", "password": "other-pass"})
    assert response.status_code == 409
    assert response.json() == {"detail": "Username already taken"}


def test_login(client):
    register(client, "bob", "bob-password")
    response = client.post("/api/auth/login", json={"username": "Bob", "password": "bob-password"})
    assert response.status_code == 200
    token = response.json()["access_token"]
    me = client.get("/api/auth/me", headers={"Authorization": f"Bearer {token}"})
    assert me.json()["username"] == "bob"


def test_login_wrong_password_or_unknown_user_is_401(client):
    register(client, "bob", "bob-password")
    for creds in ({"username": "bob", "password": "wrong-password"},
                  {"username": "nobody", "password": "bob-password"}):
        response = client.post("/api/auth/login", json=creds)
        assert response.status_code == 401
        assert response.json() == {"detail": "Incorrect username or password"}
        assert response.headers["www-authenticate"] == "Bearer"


def test_bad_tokens_are_401(client):
    register(client)
    expired = jwt.encode(
        {"sub": "1", "exp": datetime.now(timezone.utc) - timedelta(minutes=1)}, "test-secret", "HS256"
    )
    foreign = jwt.encode({"sub": "1"}, "another-secret", "HS256")
    unknown_user = jwt.encode({"sub": "999"}, "test-secret", "HS256")
    no_sub = jwt.encode({"foo": "bar"}, "test-secret", "HS256")
    for token in ("garbage", expired, foreign, unknown_user, no_sub):
        response = client.get("/api/auth/me", headers={"Authorization": f"Bearer {token}"})
        assert response.status_code == 401, token
        assert response.json() == {"detail": "Invalid or expired token"}

    assert client.get("/api/auth/me").status_code == 401
    assert client.get("/api/auth/me", headers={"Authorization": "Basic abc"}).status_code == 401


def test_auth_validation_errors_are_422(client):
    bad_bodies = [
        {"username": "al", "password": "secret-pass"},          # too short
        {"username": "al ice", "password": "secret-pass"},      # bad character
        {"username": "alice", "password": "short"},             # short password
        {"username": "alice"},                                  # missing password
        {},
    ]
    for body in bad_bodies:
        response = client.post("/api/auth/register", json=body)
        assert response.status_code == 422, body
        assert isinstance(response.json()["detail"], list)
    response = client.post(
        "/api/auth/login", content="not json", headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 422
