"""A tiny OpenAI-compatible `/chat/completions` server for the tests (http.server in a thread)."""
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import List


class FakeLLM:
    """Behaviour is chosen per test through `mode`:

    ok        stream "Echo: <last user message>" in small chunks, then [DONE]
    json      ignore `stream` and answer with one JSON completion
    status500 answer HTTP 500 with a JSON error
    slow      wait `delay` seconds before answering
    cut       send one chunk, then drop the connection mid-body
    error     send one chunk, then an in-stream {"error": ...} event
    """

    def __init__(self) -> None:
        self.mode = "ok"
        self.delay = 1.5
        self.requests: List[dict] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output quiet
                pass

            def do_POST(self):
                length = int(self.headers.get("Content-Length", 0))
                body = json.loads(self.rfile.read(length) or b"{}")
                fake.requests.append(
                    {"path": self.path, "headers": dict(self.headers), "json": body}
                )
                getattr(self, "_" + fake.mode)(body)

            def _start_stream(self, length=None):
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                if length is not None:
                    self.send_header("Content-Length", str(length))
                self.end_headers()

            def _chunk(self, text):
                payload = {"choices": [{"index": 0, "delta": {"content": text}}]}
                self.wfile.write(f"data: {json.dumps(payload)}\n\n".encode())
                self.wfile.flush()

            def _ok(self, body):
                answer = "Echo: " + body["messages"][-1]["content"]
                self._start_stream()
                self.wfile.write(b": keep-alive comment\n\n")
                role = {"choices": [{"index": 0, "delta": {"role": "assistant"}}]}
                self.wfile.write(f"data: {json.dumps(role)}\n\n".encode())
                for i in range(0, len(answer), 4):
                    self._chunk(answer[i:i + 4])
                self.wfile.write(b"data: [DONE]\n\n")

            def _json(self, body):
                data = json.dumps(
                    {"choices": [{"index": 0, "message": {"role": "assistant", "content": "whole"}}]}
                ).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _status500(self, body):
                data = b'{"error": {"message": "model exploded"}}'
                self.send_response(500)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _slow(self, body):
                time.sleep(fake.delay)
                self._ok(body)

            def _cut(self, body):
                self._start_stream(length=100000)  # promise more than is sent
                self._chunk("partial")
                self.close_connection = True

            def _error(self, body):
                self._start_stream()
                self._chunk("partial")
                self.wfile.write(b'data: {"error": {"message": "overloaded"}}\n\n')

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}/v1"

    def start(self) -> "FakeLLM":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
