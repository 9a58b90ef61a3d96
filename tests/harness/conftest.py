"""Fixtures: a scripted OpenAI-compatible server on loopback (the only fake), task dirs, configs."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from appliance.harness.client import ChatClient, RetryPolicy
from appliance.harness.loop import RunConfig

MODEL = "tiny-model"


@dataclass
class Reply:
    """One scripted answer to a chat request."""

    content: str = ""
    tool_calls: list[tuple[str, str]] = field(default_factory=list)  # (name, raw arguments)
    finish_reason: str | None = None
    status: int = 200
    raw: bytes | None = None  # a complete SSE body to send instead
    truncate: bool = False  # announce more bytes than sent, then close
    delay: float = 0.0

    def body(self) -> bytes:
        if self.raw is not None:
            return self.raw
        finish = self.finish_reason or ("tool_calls" if self.tool_calls else "stop")
        chunks: list[dict[str, Any]] = [{"role": "assistant", "content": ""}]
        if self.content:
            half = len(self.content) // 2
            chunks += [{"content": self.content[:half]}, {"content": self.content[half:]}]
        for i, (name, args) in enumerate(self.tool_calls):
            half = len(args) // 2
            chunks.append({"tool_calls": [{"index": i, "id": f"call_{i}_{name}", "type": "function",
                                           "function": {"name": name, "arguments": args[:half]}}]})
            chunks.append({"tool_calls": [{"index": i, "function": {"arguments": args[half:]}}]})
        events = [_chunk([{"index": 0, "delta": d, "finish_reason": None}]) for d in chunks]
        events.append(_chunk([{"index": 0, "delta": {}, "finish_reason": finish}]))
        events.append(_chunk([], usage={"prompt_tokens": 100, "completion_tokens": 10, "total_tokens": 110}))
        return b"".join(f"data: {json.dumps(e)}\n\n".encode() for e in events) + b"data: [DONE]\n\n"


def _chunk(choices: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    return {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 0, "model": MODEL,
            "choices": choices, **extra}


def text(content: str) -> Reply:
    return Reply(content=content)


def tool(name: str, args: dict[str, Any] | str) -> Reply:
    return Reply(tool_calls=[(name, args if isinstance(args, str) else json.dumps(args))])


class ScriptedServer:
    """A real ThreadingHTTPServer on 127.0.0.1 answering from a script (or a responder function)."""

    def __init__(self, port: int = 0):
        self.script: deque[Reply] = deque()
        self.responder: Callable[[dict[str, Any]], Reply] | None = None
        self.requests: list[dict[str, Any]] = []
        self.health_failures = 0  # answer 503 on /health this many times first
        self.lock = threading.Lock()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", port), _handler(self))
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def reply_for(self, body: dict[str, Any]) -> Reply:
        with self.lock:
            self.requests.append(body)
            if self.responder is not None:
                return self.responder(body)
            return self.script.popleft() if self.script else text("done")

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def _handler(server: ScriptedServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True

        def log_message(self, *args: Any) -> None:
            pass

        def _send(self, status: int, body: bytes, ctype: str = "application/json", length: int | None = None):
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body) if length is None else length))
            self.end_headers()
            self.wfile.write(body)
            self.wfile.flush()

        def do_GET(self) -> None:
            if self.path == "/health":
                with server.lock:
                    failing = server.health_failures > 0
                    server.health_failures -= failing
                self._send(503 if failing else 200, b"")
            elif self.path == "/v1/models":
                self._send(200, json.dumps({"object": "list", "data": [{"id": MODEL, "object": "model"}]}).encode())
            else:
                self._send(404, b"{}")

        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            reply = server.reply_for(body)
            if reply.delay:
                time.sleep(reply.delay)
            if reply.status != 200:
                self._send(reply.status, json.dumps({"error": {"message": "scripted", "code": reply.status}}).encode())
                return
            data = reply.body()
            if reply.truncate:
                self._send(200, data[: len(data) // 2], "text/event-stream", length=len(data))
                self.close_connection = True
                return
            self._send(200, data, "text/event-stream")

    return Handler


@pytest.fixture
def server() -> Iterator[ScriptedServer]:
    s = ScriptedServer()
    yield s
    s.close()


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def make_task(tmp_path: Path) -> Callable[..., Path]:
    """make_task(name, check="test -f done.txt", files={...}, toml=None) -> task dir."""

    def make(name: str = "task", check: str = "test -f done.txt", files: dict[str, str] | None = None,
             toml: str | None = None, prompt: str = "Create done.txt in the workspace.") -> Path:
        d = tmp_path / "tasks" / name
        (d / "workspace").mkdir(parents=True)
        (d / "PROMPT.md").write_text(prompt)
        if toml is not None:
            (d / "task.toml").write_text(toml)
        else:
            (d / "check.sh").write_text(check + "\n")
        for rel, content in (files or {}).items():
            (d / "workspace" / rel).parent.mkdir(parents=True, exist_ok=True)
            (d / "workspace" / rel).write_text(content)
        return d

    return make


@pytest.fixture
def spans() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def make_config(tmp_path: Path, spans: InMemorySpanExporter) -> Callable[..., RunConfig]:
    def make(server: ScriptedServer | str, **overrides: Any) -> RunConfig:
        url = server if isinstance(server, str) else server.url
        client = ChatClient(url, retry=RetryPolicy(attempts=4, base_s=0.02, cap_s=0.1), read_timeout=10)
        options: dict[str, Any] = dict(
            client=client, runs_dir=tmp_path / "runs", otlp_endpoint=f"http://127.0.0.1:{closed_port()}",
            export_timeout=0.5, wait_ready_s=10, span_exporters=[spans],
        )
        return RunConfig(**(options | overrides))

    return make


def wait_for(predicate: Callable[[], Any], timeout: float = 20.0, what: str = "condition") -> Any:
    """Poll ``predicate`` until truthy (returned) or fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := predicate():
            return value
        time.sleep(0.02)
    pytest.fail(f"timed out waiting for {what}")
