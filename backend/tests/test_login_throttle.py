"""Failed logins are limited per user and per client address (5 in 15 minutes -> 429)."""
from app.throttle import LoginThrottle

from .conftest import register


def login(client, username, password, address):
    # Behind nginx the client address is the last X-Forwarded-For entry.
    return client.post(
        "/api/auth/login",
        json={"username": username, "password": password},
        headers={"X-Forwarded-For": address},
    )


def test_failed_logins_per_user_are_limited(client):
    register(client, "bob", "bob-password")
    register(client, "alice", "alice-password")
    for i in range(5):  # five addresses, one failure each: only bob's count reaches the limit
        assert login(client, "bob", "wrong-password", f"198.51.100.{i}").status_code == 401
    blocked = login(client, "bob", "bob-password", "203.0.113.1")  # even the right password
    assert blocked.status_code == 429
    assert blocked.json() == {"detail": "Too many failed logins, try again later"}
    assert 1 <= int(blocked.headers["retry-after"]) <= 15 * 60
    # Another user, from an address bob's guesses came from, is not blocked.
    assert login(client, "alice", "alice-password", "198.51.100.0").status_code == 200


def test_failed_logins_per_address_are_limited(client):
    register(client, "alice", "alice-password")
    for i in range(5):  # five usernames from one address (spoofed first entries don't count)
        assert login(client, f"user{i}", "wrong-password", f"10.9.9.{i}, 192.0.2.7").status_code == 401
    assert login(client, "alice", "alice-password", "192.0.2.7").status_code == 429
    assert login(client, "alice", "alice-password", "192.0.2.8").status_code == 200


def test_success_resets_the_users_count(client):
    register(client, "bob", "bob-password")
    for round_ in range(2):
        for i in range(4):
            address = f"198.51.100.{round_ * 10 + i}"
            assert login(client, "bob", "wrong-password", address).status_code == 401
        assert login(client, "bob", "bob-password", "203.0.113.1").status_code == 200


def test_a_block_ends_when_the_window_has_passed():
    now = [1000.0]
    throttle = LoginThrottle(max_failures=2, window=60, clock=lambda: now[0])
    throttle.failed("user:bob")
    now[0] += 30
    throttle.failed("user:bob")
    assert throttle.retry_after("user:bob", "address:x") == 30  # when the first failure expires
    now[0] += 30
    assert throttle.retry_after("user:bob") == 0
    throttle.failed("user:bob")
    assert throttle.retry_after("user:bob") == 30
    throttle.succeeded("user:bob")
    assert throttle.retry_after("user:bob") == 0
