import time

from .conftest import sse_events


def chat(client, auth, message, conversation_id=None):
    body = {"message": message}
    if conversation_id is not None:
        body["conversation_id"] = conversation_id
    return client.post("/api/chat", json=body, headers=auth)


def test_chat_streams_and_stores_new_conversation(client, auth, fake_llm):
    response = chat(client, auth, "Hello there")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    events = sse_events(response.text)

    start, *deltas, done = events
    conversation_id = start["conversation_id"]
    assert len(deltas) > 1 and all(set(e) == {"delta"} for e in deltas)
    assert "".join(e["delta"] for e in deltas) == "Echo: Hello there"
    assert done["done"] is True and done["conversation_id"] == conversation_id

    # what the LLM endpoint received
    [request] = fake_llm.requests
    assert request["path"] == "/v1/chat/completions"
    assert request["headers"]["Authorization"] == "Bearer sk-test"
    assert request["json"] == {
        "model": "test-model",
        "messages": [{"role": "user", "content": "Hello there"}],
        "stream": True,
    }

    # what was stored
    detail = client.get(f"/api/conversations/{conversation_id}", headers=auth).json()
    assert detail["title"] == "Hello there"
    assert [(m["role"], m["content"]) for m in detail["messages"]] == [
        ("user", "Hello there"),
        ("assistant", "Echo: Hello there"),
    ]
    assert detail["messages"][0]["id"] == start["user_message_id"]
    assert detail["messages"][1]["id"] == done["message_id"]


def test_chat_continues_conversation_with_history(make_client, fake_llm):
    from .conftest import register

    client = make_client(llm_system_prompt="Be brief.")
    auth = register(client)
    first = sse_events(chat(client, auth, "One").text)
    conversation_id = first[0]["conversation_id"]
    second = sse_events(chat(client, auth, "Two", conversation_id).text)
    assert second[0]["conversation_id"] == conversation_id
    assert second[-1]["done"] is True

    assert fake_llm.requests[-1]["json"]["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "One"},
        {"role": "assistant", "content": "Echo: One"},
        {"role": "user", "content": "Two"},
    ]
    detail = client.get(f"/api/conversations/{conversation_id}", headers=auth).json()
    assert len(detail["messages"]) == 4
    assert len(client.get("/api/conversations", headers=auth).json()) == 1


def test_chat_existing_empty_conversation(client, auth, fake_llm):
    conversation_id = client.post("/api/conversations", headers=auth).json()["id"]
    events = sse_events(chat(client, auth, "Hi", conversation_id).text)
    assert events[-1] == {"done": True, "message_id": events[-1]["message_id"],
                          "conversation_id": conversation_id}


def test_unreachable_llm_is_502_and_stores_nothing(make_client, closed_port_url):
    from .conftest import register

    client = make_client(llm_api_base=closed_port_url)
    auth = register(client)
    response = chat(client, auth, "Hello")
    assert response.status_code == 502
    assert response.headers["content-type"] == "application/json"
    assert response.json()["detail"].startswith("LLM endpoint unreachable")
    assert client.get("/api/conversations", headers=auth).json() == []


def test_llm_http_500_is_502(client, auth, fake_llm):
    conversation_id = client.post("/api/conversations", headers=auth).json()["id"]
    fake_llm.mode = "status500"
    response = chat(client, auth, "Hello", conversation_id)
    assert response.status_code == 502
    assert response.json()["detail"] == 'LLM endpoint returned HTTP 500: {"error": {"message": "model exploded"}}'
    detail = client.get(f"/api/conversations/{conversation_id}", headers=auth).json()
    assert detail["messages"] == []


def test_llm_timeout_is_504(make_client, fake_llm):
    from .conftest import register

    client = make_client(llm_timeout=0.3)
    auth = register(client)
    fake_llm.mode = "slow"
    fake_llm.delay = 1.0
    started = time.monotonic()
    response = chat(client, auth, "Hello")
    assert response.status_code == 504
    assert response.json() == {"detail": "LLM endpoint did not respond in time"}
    assert time.monotonic() - started < 1.0


def test_stream_cut_midway_sends_error_event(client, auth, fake_llm):
    fake_llm.mode = "cut"
    response = chat(client, auth, "Hello")
    assert response.status_code == 200
    events = sse_events(response.text)
    assert events[1] == {"delta": "partial"}
    assert "error" in events[-1] and "interrupted" in events[-1]["error"]
    assert not any(e.get("done") for e in events)

    conversation_id = events[0]["conversation_id"]
    detail = client.get(f"/api/conversations/{conversation_id}", headers=auth).json()
    assert [m["role"] for m in detail["messages"]] == ["user"]


def test_in_stream_error_event_is_forwarded(client, auth, fake_llm):
    fake_llm.mode = "error"
    events = sse_events(chat(client, auth, "Hello").text)
    assert events[-1]["error"] == "LLM endpoint error: overloaded"


def test_non_streaming_json_answer_is_accepted(client, auth, fake_llm):
    fake_llm.mode = "json"
    events = sse_events(chat(client, auth, "Hello").text)
    assert events[1] == {"delta": "whole"}
    assert events[-1]["done"] is True


def test_unknown_or_foreign_conversation_is_404_without_llm_call(client, auth, fake_llm):
    from .conftest import register

    response = chat(client, auth, "Hello", conversation_id=999)
    assert response.status_code == 404
    assert response.json() == {"detail": "Conversation not found"}

    conversation_id = client.post("/api/conversations", headers=auth).json()["id"]
    other = register(client, "mallory")
    assert chat(client, other, "Hello", conversation_id).status_code == 404
    assert fake_llm.requests == []


def test_chat_validation_and_auth(client, auth, fake_llm):
    for body in ({}, {"message": ""}, {"message": "   "}, {"message": "x" * 32001},
                 {"message": "hi", "conversation_id": "abc"}):
        response = client.post("/api/chat", json=body, headers=auth)
        assert response.status_code == 422, body
    assert client.post("/api/chat", json={"message": "hi"}).status_code == 401
    bad = {"Authorization": "Bearer nope"}
    assert client.post("/api/chat", json={"message": "hi"}, headers=bad).status_code == 401
    assert fake_llm.requests == []
