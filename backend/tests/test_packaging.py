"""The offline-rebuild contract of requirements.txt and the Dockerfile."""
from pathlib import Path

BACKEND = Path(__file__).resolve().parent.parent

PINNED = """\
fastapi==0.115.5
uvicorn==0.32.1
sqlalchemy==2.0.36
httpx==0.28.1
pydantic==2.10.3
pydantic-settings==2.7.0
python-dotenv==1.0.1
passlib[bcrypt]==1.7.4
bcrypt==4.0.1
python-jose[cryptography]==3.3.0
python-multipart==0.0.9
"""


def test_requirements_are_exactly_pinned():
    assert (BACKEND / "requirements.txt").read_text() == PINNED


def test_dockerfile_installs_from_wheelhouse_before_copying_code():
    text = (BACKEND / "Dockerfile").read_text()
    lines = [line.strip() for line in text.splitlines()]
    assert not any(line.startswith("# syntax") for line in lines)
    froms = [line for line in lines if line.startswith("FROM ")]
    assert froms == ["FROM scratch AS wheels", "FROM python:3.9-slim"]
    mount = "RUN --mount=type=bind,from=wheels,target=/wheels \\"
    assert mount in lines
    assert "--no-index --find-links=/wheels -r requirements.txt" in text
    assert lines.index("COPY requirements.txt .") < lines.index(mount) < lines.index("COPY app ./app")
    assert "curl" not in text
