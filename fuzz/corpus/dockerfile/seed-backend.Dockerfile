# Dependencies come from a wheelhouse handed in as the build context `wheels`
# (compose: build.additional_contexts: {wheels: DIR}); with none given, the empty
# default stage below is mounted and pip uses the network instead.
FROM scratch AS wheels

FROM python:3.9-slim

WORKDIR /srv

# Own cached layer: changes only when requirements.txt (or the wheelhouse) changes.
COPY requirements.txt .
RUN --mount=type=bind,from=wheels,target=/wheels \
    if [ -n "$(ls -A /wheels 2>/dev/null)" ]; then pip install --no-cache-dir --no-index --find-links=/wheels -r requirements.txt; else pip install --no-cache-dir -r requirements.txt; fi

COPY app ./app

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 \
    DATABASE_URL=sqlite:////data/chat.db
RUN mkdir -p /data
VOLUME ["/data"]

EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
    CMD ["python3", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/api/health', timeout=4)"]
CMD ["uvicorn", "app.main:app", "--host", "0.0.0.0", "--port", "8000"]
