from .conftest import register


def test_create_list_get_delete(client, auth):
    assert client.get("/api/conversations", headers=auth).json() == []

    first = client.post("/api/conversations", headers=auth)
    assert first.status_code == 201
    assert first.json()["title"] == "New chat"
    second = client.post("/api/conversations", json={"title": "  Trip plans "}, headers=auth)
    assert second.json()["title"] == "Trip plans"

    listed = client.get("/api/conversations", headers=auth).json()
    assert [c["id"] for c in listed] == [second.json()["id"], first.json()["id"]]

    detail = client.get(f"/api/conversations/{first.json()['id']}", headers=auth)
    assert detail.status_code == 200
    assert detail.json()["messages"] == []

    deleted = client.delete(f"/api/conversations/{first.json()['id']}", headers=auth)
    assert deleted.status_code == 204
    assert client.get(f"/api/conversations/{first.json()['id']}", headers=auth).status_code == 404


def test_conversations_are_private(client, auth):
    conversation_id = client.post("/api/conversations", headers=auth).json()["id"]
    other = register(client, "mallory")
    assert client.get("/api/conversations", headers=other).json() == []
    response = client.get(f"/api/conversations/{conversation_id}", headers=other)
    assert response.status_code == 404
    assert response.json() == {"detail": "Conversation not found"}
    assert client.delete(f"/api/conversations/{conversation_id}", headers=other).status_code == 404


def test_conversation_errors(client, auth):
    assert client.get("/api/conversations/12345", headers=auth).status_code == 404
    assert client.get("/api/conversations/abc", headers=auth).status_code == 422
    assert client.post("/api/conversations", json={"title": ""}, headers=auth).status_code == 422
    assert client.post("/api/conversations", json={"title": "x" * 201}, headers=auth).status_code == 422
    assert client.get("/api/conversations").status_code == 401
    assert client.post("/api/conversations").status_code == 401


def test_rename(client, auth):
    conversation_id = client.post("/api/conversations", headers=auth).json()["id"]
    url = f"/api/conversations/{conversation_id}"
    renamed = client.patch(url, json={"title": "  Holiday plans "}, headers=auth)
    assert renamed.status_code == 200
    assert renamed.json()["id"] == conversation_id
    assert renamed.json()["title"] == "Holiday plans"
    assert client.get(url, headers=auth).json()["title"] == "Holiday plans"

    assert client.patch(url, json={"title": ""}, headers=auth).status_code == 422
    assert client.patch(url, json={"title": "x" * 201}, headers=auth).status_code == 422
    assert client.patch(url, json={}, headers=auth).status_code == 422
    assert client.patch("/api/conversations/12345", json={"title": "t"}, headers=auth).status_code == 404
    other = register(client, "mallory")
    assert client.patch(url, json={"title": "mine"}, headers=other).status_code == 404
    assert client.patch(url, json={"title": "t"}).status_code == 401
    assert client.get(url, headers=auth).json()["title"] == "Holiday plans"
