"""Streaming client for an OpenAI-compatible `/chat/completions` endpoint."""
import json
from typing import AsyncIterator, Dict, List

import httpx

from .config import Settings


class LLMError(Exception):
    """The endpoint failed before any answer was streamed; maps to an HTTP status."""

    def __init__(self, status_code: int, detail: str) -> None:
        super().__init__(detail)
        self.status_code = status_code
        self.detail = detail


class LLMStreamError(Exception):
    """The endpoint failed while the answer was being streamed."""


class LLMStream:
    """An open streaming response; iterate `deltas()`, always `aclose()`."""

    def __init__(self, client: httpx.AsyncClient, response: httpx.Response) -> None:
        self._client = client
        self._response = response

    async def deltas(self) -> AsyncIterator[str]:
        try:
            content_type = self._response.headers.get("content-type", "")
            if content_type.startswith("application/json"):
                # Server ignored `stream: true` and answered in one piece.
                body = _parse_json(await self._response.aread())
                text = _message_content(body)
                if text:
                    yield text
                return
            async for line in self._response.aiter_lines():
                line = line.strip()
                if not line.startswith("data:"):
                    continue  # blank separators, comments, `event:`/`id:` fields
                data = line[len("data:"):].strip()
                if data == "[DONE]":
                    return
                for text in _delta_contents(_parse_json(data)):
                    yield text
        except httpx.HTTPError as exc:
            raise LLMStreamError(f"LLM stream interrupted: {exc.__class__.__name__}: {exc}") from exc

    async def aclose(self) -> None:
        await self._response.aclose()
        await self._client.aclose()


def _parse_json(data) -> dict:
    try:
        chunk = json.loads(data)
    except ValueError:
        raise LLMStreamError("LLM endpoint sent malformed data") from None
    if not isinstance(chunk, dict):
        raise LLMStreamError("LLM endpoint sent malformed data")
    if chunk.get("error"):
        error = chunk["error"]
        message = error.get("message") if isinstance(error, dict) else str(error)
        raise LLMStreamError(f"LLM endpoint error: {message}")
    return chunk


def _delta_contents(chunk: dict) -> List[str]:
    out = []
    for choice in chunk.get("choices") or []:
        if isinstance(choice, dict) and choice.get("index", 0) == 0:
            content = (choice.get("delta") or {}).get("content")
            if isinstance(content, str) and content:
                out.append(content)
    return out


def _message_content(body: dict) -> str:
    choices = body.get("choices") or [{}]
    content = ((choices[0] or {}).get("message") or {}).get("content")
    return content if isinstance(content, str) else ""


async def open_stream(settings: Settings, messages: List[Dict[str, str]]) -> LLMStream:
    """Send the conversation and wait for the response headers.

    Raises LLMError(502) if the endpoint is unreachable or answers with an error
    status, LLMError(504) if it does not answer in time.
    """
    url = settings.llm_api_base.rstrip("/") + "/chat/completions"
    headers = {"Accept": "text/event-stream"}
    if settings.llm_api_key:
        headers["Authorization"] = f"Bearer {settings.llm_api_key}"
    payload = {"model": settings.llm_model, "messages": messages, "stream": True}
    timeout = httpx.Timeout(settings.llm_timeout, connect=min(10.0, settings.llm_timeout))
    client = httpx.AsyncClient(timeout=timeout)
    try:
        request = client.build_request("POST", url, json=payload, headers=headers)
        response = await client.send(request, stream=True)
    except httpx.TimeoutException:
        await client.aclose()
        raise LLMError(504, "LLM endpoint did not respond in time") from None
    except (httpx.HTTPError, httpx.InvalidURL) as exc:
        await client.aclose()
        raise LLMError(502, f"LLM endpoint unreachable: {exc.__class__.__name__}") from None

    if not response.is_success:
        try:
            snippet = (await response.aread())[:300].decode("utf-8", "replace").strip()
        except httpx.HTTPError:
            snippet = ""
        finally:
            await response.aclose()
            await client.aclose()
        detail = f"LLM endpoint returned HTTP {response.status_code}"
        raise LLMError(502, f"{detail}: {snippet}" if snippet else detail)
    return LLMStream(client, response)
