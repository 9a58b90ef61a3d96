"""OpenTelemetry for one run, after the GenAI semantic conventions.

Workflow: a run creates one :class:`Telemetry` (its own TracerProvider and
MeterProvider; no globals are read or set) and wraps its work in

    invoke_agent {task}                 INTERNAL  gen_ai.operation.name=invoke_agent
      iteration {n}                     INTERNAL  appliance.iteration
        chat {model}                    CLIENT    gen_ai.* request/response/usage, server.*
        execute_tool {name}             INTERNAL  gen_ai.tool.name, gen_ai.tool.call.id

and records the histograms ``gen_ai.client.token.usage`` ({token}, with
``gen_ai.token.type``) and ``gen_ai.client.operation.duration`` (s).
Spans go through BatchSpanProcessors to OTLP http/protobuf (short export
timeout; a dead collector costs a background thread, never the loop) and to
``traces.otlp.jsonl`` in the run directory, one ExportTraceServiceRequest in
OTLP JSON per line (hex ids, integer enums), as the collector's file exporter
writes. Message content is recorded only with ``capture_content``.
"""

from __future__ import annotations

import base64
import json
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from google.protobuf.json_format import MessageToDict
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import MetricReader, PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

from appliance import __version__
from appliance.harness.client import ChatClient, ChatResult

DEFAULT_OTLP_ENDPOINT = "http://127.0.0.1:4318"
_TOKEN_BUCKETS = [4.0**i for i in range(14)]  # 1 .. 67108864, as the semconv advises
_DURATION_BUCKETS = [0.01 * 2**i for i in range(14)]  # 0.01 .. 81.92 s


class OtlpJsonFileExporter(SpanExporter):
    """Append each exported batch to a file as one OTLP JSON ExportTraceServiceRequest line."""

    def __init__(self, path: Path):
        self._file = open(path, "a", encoding="utf-8")
        self._lock = threading.Lock()

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        request = MessageToDict(encode_spans(spans), use_integers_for_enums=True)
        line = json.dumps(_hex_ids(request), separators=(",", ":")) + "\n"
        with self._lock:
            self._file.write(line)
            self._file.flush()
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        self._file.close()


def _hex_ids(node: Any) -> Any:
    """OTLP JSON encodes trace and span ids as hex, not protobuf JSON's base64."""
    if isinstance(node, list):
        return [_hex_ids(item) for item in node]
    if isinstance(node, dict):
        return {
            k: base64.b64decode(v).hex() if k in ("traceId", "spanId", "parentSpanId") else _hex_ids(v)
            for k, v in node.items()
        }
    return node


class Telemetry:
    """Tracer, meter and exporters of one run. Call :meth:`shutdown` when the run ends."""

    def __init__(
        self,
        traces_file: Path | None,
        *,
        otlp_endpoint: str | None = DEFAULT_OTLP_ENDPOINT,
        capture_content: bool = False,
        export_timeout: float = 1.0,
        span_exporters: Sequence[SpanExporter] = (),
        metric_readers: Sequence[MetricReader] = (),
        run_id: str = "",
    ):
        self.capture_content = capture_content
        self._export_timeout = export_timeout
        resource = Resource.create(
            {"service.name": "appliance", "service.version": __version__, "appliance.run.id": run_id}
        )
        exporters = list(span_exporters)
        readers = list(metric_readers)
        if traces_file is not None:
            exporters.append(OtlpJsonFileExporter(traces_file))
        if otlp_endpoint:
            base = otlp_endpoint.rstrip("/")
            exporters.append(OTLPSpanExporter(endpoint=f"{base}/v1/traces", timeout=export_timeout))
            metric_exporter = OTLPMetricExporter(endpoint=f"{base}/v1/metrics", timeout=export_timeout)
            readers.append(
                PeriodicExportingMetricReader(metric_exporter, export_timeout_millis=export_timeout * 1000)
            )
        self._tracer_provider = TracerProvider(resource=resource)
        for exporter in exporters:
            self._tracer_provider.add_span_processor(BatchSpanProcessor(exporter, schedule_delay_millis=1000))
        self._meter_provider = MeterProvider(resource=resource, metric_readers=readers)
        self.tracer = self._tracer_provider.get_tracer("appliance.harness", __version__)
        meter = self._meter_provider.get_meter("appliance.harness", __version__)
        self._token_usage = meter.create_histogram(
            "gen_ai.client.token.usage", "{token}", "Number of input and output tokens used",
            explicit_bucket_boundaries_advisory=_TOKEN_BUCKETS,
        )
        self._duration = meter.create_histogram(
            "gen_ai.client.operation.duration", "s", "GenAI operation duration",
            explicit_bucket_boundaries_advisory=_DURATION_BUCKETS,
        )
        # The loop's own counters (no semconv for these): what the box's Grafana dashboard plots.
        self._iterations = meter.create_counter("appliance.agent.iterations", "{iteration}", "Loop iterations started")
        self._tool_calls = meter.create_counter("appliance.agent.tool_calls", "{call}", "Tool calls executed")
        self._checks = meter.create_counter("appliance.agent.checks", "{check}", "Checks run, by outcome")

    @contextmanager
    def agent(self, task: str, run_id: str, client: ChatClient) -> Iterator[Span]:
        attributes = {
            "gen_ai.operation.name": "invoke_agent",
            "gen_ai.agent.name": task,
            "gen_ai.conversation.id": run_id,
            "gen_ai.provider.name": client.provider,
            "gen_ai.request.model": client.model or "",
        }
        with self._span(f"invoke_agent {task}", attributes) as span:
            yield span

    def outcome(self, agent_span: Span, status: str, reason: str) -> None:
        agent_span.set_attribute("appliance.run.status", status)
        if status == "error":
            agent_span.set_attribute("error.type", reason.split(":", 1)[0])
            agent_span.set_status(Status(StatusCode.ERROR, reason[:500]))

    @contextmanager
    def iteration(self, number: int) -> Iterator[Span]:
        self._iterations.add(1)
        with self._span(f"iteration {number}", {"appliance.iteration": number}) as span:
            yield span

    def check_result(self, passed: bool) -> None:
        self._checks.add(1, {"appliance.check.passed": passed})

    def _span(self, name: str, attributes: dict[str, Any], kind: SpanKind = SpanKind.INTERNAL):
        """A span that leaves status to the caller: control-flow exceptions are no errors."""
        return self.tracer.start_as_current_span(
            name, kind=kind, attributes=attributes, record_exception=False, set_status_on_exception=False
        )

    @contextmanager
    def chat(self, client: ChatClient, messages: list[dict[str, Any]]) -> Iterator[_ChatRecorder]:
        """Span ``chat {model}`` and the two metrics around one LLM call."""
        common = {
            "gen_ai.operation.name": "chat",
            "gen_ai.provider.name": client.provider,
            "gen_ai.request.model": client.model or "",
            "server.address": client.address,
            "server.port": client.port,
        }
        with self._span(f"chat {client.model}", common, SpanKind.CLIENT) as span:
            if self.capture_content:
                span.set_attribute("gen_ai.input.messages", json.dumps(_semconv_messages(messages)))
            recorder = _ChatRecorder(span, common, self.capture_content)
            start = time.perf_counter()
            try:
                yield recorder
            except BaseException as exc:
                common["error.type"] = type(exc).__qualname__
                span.set_attribute("error.type", common["error.type"])
                span.set_status(Status(StatusCode.ERROR, str(exc)[:500]))
                raise
            finally:
                self._duration.record(time.perf_counter() - start, common)
                if recorder.result is not None:
                    self._record_usage(recorder.result, common)

    def _record_usage(self, result: ChatResult, common: dict[str, Any]) -> None:
        self._token_usage.record(result.input_tokens, common | {"gen_ai.token.type": "input"})
        self._token_usage.record(result.output_tokens, common | {"gen_ai.token.type": "output"})

    @contextmanager
    def tool(self, name: str, call_id: str, arguments: str) -> Iterator[Span]:
        attributes = {
            "gen_ai.operation.name": "execute_tool",
            "gen_ai.tool.name": name,
            "gen_ai.tool.call.id": call_id,
            "gen_ai.tool.type": "function",
        }
        if self.capture_content:
            attributes["gen_ai.tool.call.arguments"] = arguments
        with self._span(f"execute_tool {name}", attributes) as span:
            yield span

    def tool_result(self, span: Span, content: str, is_error: bool, name: str = "") -> None:
        self._tool_calls.add(1, {"gen_ai.tool.name": name, "appliance.tool.error": is_error})
        if self.capture_content:
            span.set_attribute("gen_ai.tool.call.result", content)
        if is_error:
            span.set_attribute("error.type", "tool_error")
            span.set_status(Status(StatusCode.ERROR))

    def shutdown(self, timeout: float | None = None) -> None:
        """Flush and stop the exporters; returns within ``timeout`` (default 2x export timeout)."""
        worker = threading.Thread(target=self._shutdown, daemon=True)
        worker.start()
        worker.join(timeout if timeout is not None else 2 * self._export_timeout + 1)

    def _shutdown(self) -> None:
        self._tracer_provider.shutdown()
        self._meter_provider.shutdown(timeout_millis=self._export_timeout * 1000)


class _ChatRecorder:
    """Handed out by :meth:`Telemetry.chat`; :meth:`record` the result before leaving the block."""

    def __init__(self, span: Span, common: dict[str, Any], capture_content: bool):
        self.span, self.common, self.capture_content = span, common, capture_content
        self.result: ChatResult | None = None

    def record(self, result: ChatResult) -> None:
        self.result = result
        self.common["gen_ai.response.model"] = result.model
        self.span.set_attributes({
            "gen_ai.response.model": result.model,
            "gen_ai.response.id": result.id,
            "gen_ai.response.finish_reasons": [result.finish_reason or ""],
            "gen_ai.usage.input_tokens": result.input_tokens,
            "gen_ai.usage.output_tokens": result.output_tokens,
        })
        if self.capture_content:
            message = {"role": "assistant", "content": result.content,
                       "tool_calls": [c.message() for c in result.tool_calls]}
            output = _semconv_messages([message])[0] | {"finish_reason": result.finish_reason or ""}
            self.span.set_attribute("gen_ai.output.messages", json.dumps([output]))


def _semconv_messages(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Chat messages in the GenAI semconv JSON shape (role + typed parts)."""
    out = []
    for m in messages:
        parts: list[dict[str, Any]] = []
        if m.get("role") == "tool":
            parts.append({"type": "tool_call_response", "id": m.get("tool_call_id"), "response": m.get("content")})
        elif m.get("content"):
            parts.append({"type": "text", "content": m["content"]})
        for call in m.get("tool_calls") or ():
            function = call["function"]
            parts.append({"type": "tool_call", "id": call["id"], "name": function["name"],
                          "arguments": function["arguments"]})
        out.append({"role": m.get("role"), "parts": parts})
    return out
