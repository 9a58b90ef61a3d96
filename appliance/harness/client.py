"""A small client for an OpenAI-compatible server (vLLM): readiness and streamed chat.

Workflow::

    client = ChatClient("http://127.0.0.1:8000", model=None)
    client.wait_ready(timeout=120)        # GET /health until 200, then GET /v1/models
    result = client.chat(messages, tools=TOOL_SPECS, tool_choice="auto")
    result.tool_calls                     # complete calls, arguments concatenated by index

``chat`` POSTs ``/v1/chat/completions`` with ``stream: true`` and
``stream_options: {include_usage: true}`` and parses the SSE stream itself.
Connect errors, other transport errors, 429 and 5xx are retried with
exponential backoff and full jitter (``Retry-After`` honoured, capped); any
other 4xx is not. A stream that cannot be understood raises
:class:`MalformedResponse` naming what was wrong. No SDK, no proxy.
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import httpx

from appliance.errors import HarnessError


class ClientError(HarnessError):
    """Talking to the model server failed."""


class ServerUnavailable(ClientError):
    """The server could not be reached, or kept failing, within the retry budget."""


class RequestRejected(ClientError):
    """The server refused the request with a 4xx status (not retried)."""

    def __init__(self, status: int, body: str):
        super().__init__(f"server rejected the request: HTTP {status}: {body[:500]}")
        self.status = status
        self.body = body


class MalformedResponse(ClientError):
    """The response or its SSE stream does not follow the chat completions protocol."""


class Cancelled(ClientError):
    """The caller's cancel event was set while waiting on the server."""


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 6
    base_s: float = 0.5
    cap_s: float = 8.0

    def delay(self, attempt: int, retry_after: str | None = None) -> float:
        """Full-jitter backoff for the ``attempt``-th retry (0-based)."""
        if retry_after and retry_after.strip().isdigit():
            return min(float(retry_after), self.cap_s)
        return random.uniform(0, min(self.cap_s, self.base_s * 2**attempt))


@dataclass
class ToolCall:
    id: str
    name: str
    arguments: str  # raw JSON text as the model produced it; may be invalid

    def message(self) -> dict[str, Any]:
        return {"id": self.id, "type": "function", "function": {"name": self.name, "arguments": self.arguments}}


@dataclass
class ChatResult:
    id: str = ""
    model: str = ""
    content: str = ""
    tool_calls: list[ToolCall] = field(default_factory=list)
    finish_reason: str | None = None
    input_tokens: int = 0
    output_tokens: int = 0


_RETRY_STATUS = {429} | set(range(500, 600))


class ChatClient:
    """Thread-safe client; share one instance between concurrent runs."""

    def __init__(
        self,
        base_url: str,
        model: str | None = None,
        *,
        api_key: str | None = None,
        provider: str = "vllm",
        connect_timeout: float = 5.0,
        read_timeout: float = 300.0,
        retry: RetryPolicy = RetryPolicy(),
    ):
        self.base_url = base_url.rstrip("/").removesuffix("/v1")
        self.model = model
        self.provider = provider  # gen_ai.provider.name in telemetry
        self.retry = retry
        parts = urlsplit(self.base_url)
        self.address = parts.hostname or ""
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = httpx.Client(
            base_url=self.base_url,
            headers=headers,
            timeout=httpx.Timeout(read_timeout, connect=connect_timeout),
            limits=httpx.Limits(max_connections=64, max_keepalive_connections=64),
        )

    def close(self) -> None:
        self._http.close()

    def wait_ready(self, timeout: float = 120.0, cancel: threading.Event | None = None) -> str:
        """Wait until /health answers 200 and /v1/models lists a model; return the model id.

        Without a configured model the first listed one is chosen.
        """
        deadline = time.monotonic() + timeout
        attempt, last = 0, "no attempt"
        while True:
            try:
                if self._http.get("/health").status_code == 200:
                    reply = self._http.get("/v1/models")
                    ids = [m["id"] for m in reply.json()["data"]] if reply.status_code == 200 else []
                    if self.model and self.model not in ids and ids:
                        raise ServerUnavailable(f"model {self.model!r} not served; the server has {ids}")
                    if ids:
                        self.model = self.model or ids[0]
                        return self.model
                    last = f"/v1/models: HTTP {reply.status_code}, no models"
                else:
                    last = "/health not ready"
            except httpx.TransportError as exc:
                last = f"{type(exc).__name__}: {exc}"
            except (ValueError, KeyError, TypeError) as exc:
                raise MalformedResponse(f"/v1/models: unexpected body ({exc})") from None
            left = deadline - time.monotonic()
            if left <= 0:
                break
            _pause(min(max(self.retry.delay(attempt), 0.05), left), cancel)
            attempt += 1
        raise ServerUnavailable(f"{self.base_url} not ready after {timeout:.0f}s ({last})")

    def chat(
        self,
        messages: list[dict[str, Any]],
        *,
        tools: list[dict[str, Any]] | None = None,
        tool_choice: str | dict[str, Any] | None = None,
        max_tokens: int | None = None,
        temperature: float | None = None,
        cancel: threading.Event | None = None,
    ) -> ChatResult:
        """One streamed chat completion, retried on transient failures."""
        body: dict[str, Any] = {
            "model": self.model,
            "messages": messages,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        optional = {"tools": tools, "tool_choice": tool_choice, "max_tokens": max_tokens, "temperature": temperature}
        body |= {k: v for k, v in optional.items() if v is not None}
        last = ""
        for attempt in range(self.retry.attempts):
            retry_after = None
            try:
                with self._http.stream("POST", "/v1/chat/completions", json=body) as response:
                    if response.status_code < 400:
                        return parse_stream(response.iter_lines(), cancel)
                    text = response.read().decode("utf-8", "replace")
                    if response.status_code not in _RETRY_STATUS:
                        raise RequestRejected(response.status_code, text)
                    last = f"HTTP {response.status_code}: {text[:200]}"
                    retry_after = response.headers.get("retry-after")
            except httpx.TransportError as exc:
                last = f"{type(exc).__name__}: {exc}"
            if attempt + 1 < self.retry.attempts:
                _pause(self.retry.delay(attempt, retry_after), cancel)
        raise ServerUnavailable(f"chat completion failed after {self.retry.attempts} attempts: {last}")


def parse_stream(lines: Iterator[str], cancel: threading.Event | None = None) -> ChatResult:
    """Fold an SSE chat-completion stream into one :class:`ChatResult`."""
    result = ChatResult()
    calls: dict[int, ToolCall] = {}
    content: list[str] = []
    saw_choices = done = False
    for data in _sse_data(lines):
        if cancel and cancel.is_set():
            raise Cancelled("cancelled during the stream")
        if done:  # read the body to its end, so the connection goes back to the pool
            continue
        if data == "[DONE]":
            done = True
            continue
        chunk = _json_object(data)
        if "error" in chunk:
            raise MalformedResponse(f"server sent an error in the stream: {json.dumps(chunk['error'])[:500]}")
        result.id = result.id or str(chunk.get("id", ""))
        result.model = result.model or str(chunk.get("model", ""))
        if usage := chunk.get("usage"):
            result.input_tokens = int(usage.get("prompt_tokens") or 0)
            result.output_tokens = int(usage.get("completion_tokens") or 0)
        choices = chunk.get("choices")
        if not isinstance(choices, list):
            raise MalformedResponse(f"chunk without a choices list: {data[:200]}")
        for choice in choices:
            saw_choices = True
            _fold_choice(choice, content, calls, result)
    if not done:
        raise MalformedResponse("stream ended without [DONE]")
    if not saw_choices:
        raise MalformedResponse("stream carried no choices")
    result.content = "".join(content)
    result.tool_calls = [calls[i] for i in sorted(calls)]
    return result


def _fold_choice(choice: Any, content: list[str], calls: dict[int, ToolCall], result: ChatResult) -> None:
    delta = choice.get("delta") if isinstance(choice, dict) else None
    if not isinstance(delta, dict):
        raise MalformedResponse(f"choice without a delta object: {str(choice)[:200]}")
    if text := delta.get("content"):
        content.append(text)
    for part in delta.get("tool_calls") or ():
        try:
            index = int(part.get("index", 0))
            function = part.get("function") or {}
            call = calls.setdefault(index, ToolCall(id="", name="", arguments=""))
            call.id = call.id or part.get("id") or f"call_{index}"
            call.name = call.name or function.get("name") or ""
            call.arguments += function.get("arguments") or ""
        except (AttributeError, TypeError, ValueError) as exc:
            raise MalformedResponse(f"bad tool_call delta {str(part)[:200]}: {exc}") from None
    if choice.get("finish_reason"):
        result.finish_reason = choice["finish_reason"]


def _sse_data(lines: Iterator[str]) -> Iterator[str]:
    """The data payload of each SSE event (multi-line data joined by newlines)."""
    buffer: list[str] = []
    for line in lines:
        if line.startswith("data:"):
            buffer.append(line[5:].removeprefix(" "))
        elif not line and buffer:
            yield "\n".join(buffer)
            buffer = []
    if buffer:
        yield "\n".join(buffer)


def _json_object(data: str) -> dict[str, Any]:
    try:
        chunk = json.loads(data)
    except json.JSONDecodeError as exc:
        raise MalformedResponse(f"bad JSON in an SSE data line ({exc}): {data[:200]}") from None
    if not isinstance(chunk, dict):
        raise MalformedResponse(f"SSE data is not a JSON object: {data[:200]}")
    return chunk


def _pause(seconds: float, cancel: threading.Event | None) -> None:
    """Sleep, or raise :class:`Cancelled` as soon as ``cancel`` is set."""
    if cancel is None:
        time.sleep(seconds)
    elif cancel.wait(seconds):
        raise Cancelled("cancelled while waiting for the server")
