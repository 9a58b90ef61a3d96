"""The HTTP/SSE client against the scripted server: parsing, errors, retries, readiness."""

from __future__ import annotations

import json
import socket
import threading

import pytest

from appliance.harness.client import (
    ChatClient, MalformedResponse, RequestRejected, RetryPolicy, ServerUnavailable, parse_stream,
)

from .conftest import MODEL, Reply, ScriptedServer, closed_port, text, tool, wait_for

FAST = RetryPolicy(attempts=4, base_s=0.01, cap_s=0.05)


def client_for(server: ScriptedServer) -> ChatClient:
    return ChatClient(server.url, MODEL, retry=FAST, read_timeout=5)


def sse(*payloads: str) -> bytes:
    return b"".join(f"data: {p}\n\n".encode() for p in payloads)


def test_streamed_tool_call_deltas_are_accumulated_by_index(server):
    server.script.append(Reply(content="thinking", tool_calls=[("read_file", '{"path": "a.txt"}'),
                                                               ("shell", '{"command": "ls -la"}')]))
    result = client_for(server).chat([{"role": "user", "content": "hi"}], tools=[], tool_choice="required")
    assert [(c.id, c.name, json.loads(c.arguments)) for c in result.tool_calls] == [
        ("call_0_read_file", "read_file", {"path": "a.txt"}),
        ("call_1_shell", "shell", {"command": "ls -la"}),
    ]
    assert (result.content, result.finish_reason, result.model) == ("thinking", "tool_calls", MODEL)
    assert (result.input_tokens, result.output_tokens) == (100, 10)
    assert server.requests[0]["tool_choice"] == "required" and server.requests[0]["stream"] is True


def test_sse_multiline_data_and_comments():
    lines = [": keep-alive", "event: message", 'data: {"id": "x", "model": "m",', 'data:  "choices": [{"delta":',
             'data: {"content": "hi"}, "finish_reason": "stop"}]}', "", "data: [DONE]", ""]
    result = parse_stream(iter(lines))
    assert (result.content, result.finish_reason, result.id) == ("hi", "stop", "x")


@pytest.mark.parametrize("body, message", [
    (sse("{not json", "[DONE]"), "bad JSON in an SSE data line"),
    (sse('{"id": "x"}', "[DONE]"), "chunk without a choices list"),
    (sse('{"id": "x", "choices": []}', "[DONE]"), "stream carried no choices"),
    (sse('{"id": "x", "choices": [{"delta": {"content": "a"}}]}'), "stream ended without [DONE]"),
    (sse('{"error": {"message": "boom"}}', "[DONE]"), "server sent an error in the stream"),
    (sse("[1, 2]", "[DONE]"), "not a JSON object"),
    (sse('{"choices": [{"delta": {"tool_calls": [{"index": "x"}]}}]}', "[DONE]"), "bad tool_call delta"),
])
def test_malformed_streams_raise_clear_errors_without_retry(server, body, message):
    server.script.append(Reply(raw=body))
    with pytest.raises(MalformedResponse, match=message.replace("[", r"\[").replace("]", r"\]")):
        client_for(server).chat([{"role": "user", "content": "hi"}])
    assert len(server.requests) == 1


def test_4xx_is_not_retried(server):
    server.script.extend([Reply(status=400), text("never")])
    with pytest.raises(RequestRejected) as info:
        client_for(server).chat([{"role": "user", "content": "hi"}])
    assert info.value.status == 400 and len(server.requests) == 1


def test_429_5xx_and_dropped_streams_are_retried(server):
    server.script.extend([Reply(status=429), Reply(status=500), Reply(content="x", truncate=True), text("ok")])
    result = client_for(server).chat([{"role": "user", "content": "hi"}])
    assert result.content == "ok" and len(server.requests) == 4


def test_retries_give_up_with_server_unavailable(server):
    server.script.extend([Reply(status=503)] * 4)
    with pytest.raises(ServerUnavailable, match="after 4 attempts: HTTP 503"):
        client_for(server).chat([{"role": "user", "content": "hi"}])


def test_wait_ready_survives_refused_then_reset_then_unhealthy():
    port = closed_port()
    client = ChatClient(f"http://127.0.0.1:{port}", retry=RetryPolicy(base_s=0.02, cap_s=0.05))
    ready: dict[str, object] = {}
    waiter = threading.Thread(target=lambda: ready.update(model=client.wait_ready(timeout=20)))
    waiter.start()
    # First nothing listens (connection refused); then a listener that resets connections.
    listener = socket.create_server(("127.0.0.1", port))
    accepted = 0
    while accepted < 2:
        conn, _ = listener.accept()
        conn.close()
        accepted += 1
    listener.close()
    server = ScriptedServer(port)  # up, but /health says 503 twice (vLLM still loading)
    server.health_failures = 2
    try:
        waiter.join(20)
        assert ready["model"] == MODEL and server.health_failures == 0
        assert client.chat([{"role": "user", "content": "hi"}]).content == "done"
    finally:
        server.close()


def test_wait_ready_times_out_with_server_unavailable():
    client = ChatClient(f"http://127.0.0.1:{closed_port()}", retry=RetryPolicy(base_s=0.01, cap_s=0.02))
    with pytest.raises(ServerUnavailable, match="not ready after"):
        client.wait_ready(timeout=0.3)


def test_wait_ready_rejects_a_model_the_server_does_not_serve(server):
    with pytest.raises(ServerUnavailable, match="not served"):
        ChatClient(server.url, "other-model", retry=FAST).wait_ready(timeout=2)
