from app.config import DEFAULT_DATABASE_URL, Settings
from app.main import create_app
from fastapi.testclient import TestClient


def test_settings_from_env(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # no stray .env is picked up
    for name, value in {
        "DATABASE_URL": "sqlite:////tmp/x.db",
        "JWT_SECRET": "s3cret",
        "LLM_API_BASE": "http://llm:8080/v1",
        "LLM_API_KEY": "k",
        "LLM_MODEL": "m",
        "LLM_TIMEOUT": "12.5",
        "BCRYPT_ROUNDS": "5",
        "CORS_ORIGINS": "http://a, http://b",
    }.items():
        monkeypatch.setenv(name, value)
    settings = Settings.from_env()
    assert settings.database_url == "sqlite:////tmp/x.db"
    assert settings.jwt_secret == "s3cret" and not settings.uses_dev_secret
    assert (settings.llm_api_base, settings.llm_api_key, settings.llm_model) == ("http://llm:8080/v1", "k", "m")
    assert settings.llm_timeout == 12.5 and settings.bcrypt_rounds == 5
    assert settings.cors_origins == ("http://a", "http://b")


def test_defaults(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    for name in ("DATABASE_URL", "JWT_SECRET", "LLM_API_KEY", "CORS_ORIGINS"):
        monkeypatch.delenv(name, raising=False)
    settings = Settings.from_env()
    assert settings.database_url == DEFAULT_DATABASE_URL
    assert DEFAULT_DATABASE_URL.endswith("/data/chat.db")
    assert settings.uses_dev_secret and settings.llm_api_key is None


def test_sqlite_directory_is_created(tmp_path, caplog):
    db_file = tmp_path / "nested" / "dir" / "chat.db"
    app = create_app(Settings(database_url=f"sqlite:///{db_file}", bcrypt_rounds=4))
    with TestClient(app) as client:
        assert client.get("/api/health").json() == {"status": "ok"}
    assert db_file.exists()
    assert "JWT_SECRET is not set" in caplog.text
