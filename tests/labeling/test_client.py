"""The client's error types and retry policy, against real local HTTP servers."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from labeling.client import (
    LabelStudioAuthRefused,
    LabelStudioBadRequest,
    LabelStudioClient,
    LabelStudioNotConfigured,
    LabelStudioUnavailable,
)


class Scripted(BaseHTTPRequestHandler):
    """Answers each request with the next (status, body) of the server's script."""

    def do_GET(self) -> None:
        self.server.requests += 1
        status, body = self.server.script.pop(0) if self.server.script else (200, {"email": "a@b"})
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture()
def server() -> Iterator[ThreadingHTTPServer]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Scripted)
    httpd.script, httpd.requests = [], 0
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()


def client_for(server: ThreadingHTTPServer, retries: int = 2) -> LabelStudioClient:
    return LabelStudioClient(f"http://127.0.0.1:{server.server_address[1]}", "token", retries=retries, backoff=0.01,
                             timeout=2)


def test_transient_failures_are_retried(server) -> None:
    server.script = [(503, {}), (502, {})]
    assert client_for(server).whoami()["email"] == "a@b"
    assert server.requests == 3


def test_giving_up_says_it_is_unavailable(server) -> None:
    server.script = [(500, {})] * 5
    with pytest.raises(LabelStudioUnavailable, match="is unavailable"):
        client_for(server).whoami()
    assert server.requests == 3


@pytest.mark.parametrize(("status", "error"), [(401, LabelStudioAuthRefused), (403, LabelStudioAuthRefused),
                                               (400, LabelStudioBadRequest), (404, LabelStudioBadRequest)])
def test_client_errors_are_not_retried(server, status, error) -> None:
    server.script = [(status, {"detail": "no"})]
    with pytest.raises(error):
        client_for(server).whoami()
    assert server.requests == 1


def test_unreachable_server() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # nothing listens here once the socket closes
    with pytest.raises(LabelStudioUnavailable, match="ConnectError"):
        LabelStudioClient(f"http://127.0.0.1:{port}", "token", retries=1, backoff=0.01).whoami()


def test_a_missing_configuration_is_named(settings) -> None:
    settings.LABEL_STUDIO_URL = ""
    with pytest.raises(LabelStudioNotConfigured, match="LABEL_STUDIO_URL"):
        LabelStudioClient()


class ScriptedPost(Scripted):
    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.do_GET()


def test_a_failed_import_is_not_retried() -> None:
    """An import that timed out or failed may still have created tasks: retrying could duplicate
    them, so the client gives up at once and the next push confirms what arrived."""
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), ScriptedPost)
    httpd.script, httpd.requests = [(503, {}), (201, {"task_ids": [1]})], 0
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        with pytest.raises(LabelStudioUnavailable):
            client_for(httpd, retries=3).import_tasks(1, [{"data": {"image": "x"}}])
        assert httpd.requests == 1
    finally:
        httpd.shutdown()
