"""Spans and metrics after the GenAI semconv, OTLP JSON file, content capture, dead collectors."""

from __future__ import annotations

import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from appliance.harness.loop import run_tasks
from appliance.harness.store import RunPaths, read_events

from .conftest import MODEL, text, tool, wait_for


def file_spans(path):
    """Spans read back from traces.otlp.jsonl: name -> list of (span dict with flat attributes)."""
    spans = []
    for line in path.read_text().splitlines():
        for rs in json.loads(line)["resourceSpans"]:
            for ss in rs["scopeSpans"]:
                for span in ss["spans"]:
                    attrs = {a["key"]: next(iter(a["value"].values())) for a in span.get("attributes", [])}
                    spans.append(span | {"attrs": attrs})
    return spans


def run_two_steps(server, make_task, make_config, **config):
    server.script.extend([tool("write_file", {"path": "done.txt", "content": "SECRET-CONTENT"}),
                          text("all done SECRET-ANSWER")])
    cfg = make_config(server, **config)
    [state] = run_tasks([make_task(prompt="PROMPT-TEXT: create done.txt")], cfg)
    assert state.status == "passed"
    return RunPaths(cfg.runs_dir / state.run_id)


def test_span_tree_and_genai_attributes(server, make_task, make_config, spans):
    reader = InMemoryMetricReader()
    paths = run_two_steps(server, make_task, make_config, metric_readers=[reader])
    memory = {s.name: s for s in spans.get_finished_spans()}
    assert set(memory) == {"invoke_agent task", "iteration 1", f"chat {MODEL}", "execute_tool write_file"}
    agent, iteration = memory["invoke_agent task"], memory["iteration 1"]
    chat, tool_span = memory[f"chat {MODEL}"], memory["execute_tool write_file"]
    assert agent.parent is None and iteration.parent.span_id == agent.context.span_id
    assert chat.parent.span_id == iteration.context.span_id == tool_span.parent.span_id
    assert agent.attributes["gen_ai.operation.name"] == "invoke_agent"
    assert agent.attributes["gen_ai.conversation.id"] == paths.run_id
    assert chat.kind.name == "CLIENT"
    assert {k: chat.attributes[k] for k in (
        "gen_ai.operation.name", "gen_ai.provider.name", "gen_ai.request.model", "gen_ai.response.model",
        "gen_ai.response.id", "gen_ai.usage.input_tokens", "gen_ai.usage.output_tokens", "server.address")} == {
        "gen_ai.operation.name": "chat", "gen_ai.provider.name": "vllm", "gen_ai.request.model": MODEL,
        "gen_ai.response.model": MODEL, "gen_ai.response.id": "chatcmpl-1", "gen_ai.usage.input_tokens": 100,
        "gen_ai.usage.output_tokens": 10, "server.address": "127.0.0.1"}
    assert chat.attributes["server.port"] == server.port
    assert tuple(chat.attributes["gen_ai.response.finish_reasons"]) in {("tool_calls",), ("stop",)}
    assert tool_span.attributes["gen_ai.tool.name"] == "write_file"
    assert tool_span.attributes["gen_ai.tool.call.id"] == "call_0_write_file"
    assert tool_span.attributes["gen_ai.operation.name"] == "execute_tool"

    # The same tree, with hex ids, in the OTLP JSON file.
    from_file = file_spans(paths.traces)
    assert sorted(s["name"] for s in from_file) == sorted(s.name for s in spans.get_finished_spans())
    by_name = {s["name"]: s for s in from_file}
    assert by_name["iteration 1"]["parentSpanId"] == by_name["invoke_agent task"]["spanId"]
    assert by_name["invoke_agent task"]["spanId"] == format(agent.context.span_id, "016x")
    assert by_name[f"chat {MODEL}"]["kind"] == 3  # SPAN_KIND_CLIENT as an integer enum
    assert by_name[f"chat {MODEL}"]["attrs"]["gen_ai.usage.input_tokens"] == "100"  # int64 as JSON string

    metrics = {m.name: m for rm in reader.get_metrics_data().resource_metrics
               for sm in rm.scope_metrics for m in sm.metrics}
    usage = metrics["gen_ai.client.token.usage"]
    sums = {p.attributes["gen_ai.token.type"]: p.sum for p in usage.data.data_points}
    assert sums == {"input": 200, "output": 20} and usage.unit == "{token}"
    duration = metrics["gen_ai.client.operation.duration"]
    assert duration.unit == "s" and sum(p.count for p in duration.data.data_points) == 2
    # the loop's own counters, which the box's dashboard plots
    assert [p.value for p in metrics["appliance.agent.iterations"].data.data_points] == [1]
    calls = {(p.attributes["gen_ai.tool.name"], p.attributes["appliance.tool.error"]): p.value
             for p in metrics["appliance.agent.tool_calls"].data.data_points}
    assert calls == {("write_file", False): 1}
    checks = {p.attributes["appliance.check.passed"]: p.value for p in metrics["appliance.agent.checks"].data.data_points}
    assert sum(checks.values()) == 1


def test_content_is_not_captured_by_default(server, make_task, make_config, spans):
    paths = run_two_steps(server, make_task, make_config)
    dumped = paths.traces.read_text() + repr([dict(s.attributes) for s in spans.get_finished_spans()])
    for secret in ("PROMPT-TEXT", "SECRET-CONTENT", "SECRET-ANSWER"):
        assert secret not in dumped


def test_content_is_captured_with_the_flag(server, make_task, make_config, spans):
    run_two_steps(server, make_task, make_config, capture_content=True)
    chats = [s for s in spans.get_finished_spans() if s.name.startswith("chat")]
    assert "PROMPT-TEXT" in chats[0].attributes["gen_ai.input.messages"]
    assert "SECRET-ANSWER" in chats[1].attributes["gen_ai.output.messages"]
    tool_span = next(s for s in spans.get_finished_spans() if s.name.startswith("execute_tool"))
    assert "SECRET-CONTENT" in tool_span.attributes["gen_ai.tool.call.arguments"]
    assert tool_span.attributes["gen_ai.tool.call.result"].startswith("wrote")


def test_a_hanging_collector_does_not_slow_the_loop(server, make_task, make_config):
    """The collector accepts connections and never answers: every export waits its full timeout."""
    hanging = socket.create_server(("127.0.0.1", 0), backlog=64)
    server.script.extend([tool("list_dir", {})] * 12 + [tool("write_file", {"path": "done.txt", "content": "x"}),
                                                         text("done")])
    export_timeout = 2.0
    config = make_config(server, otlp_endpoint=f"http://127.0.0.1:{hanging.getsockname()[1]}",
                         export_timeout=export_timeout)
    start = time.monotonic()
    try:
        [state] = run_tasks([make_task()], config)
    finally:
        hanging.close()
    wall = time.monotonic() - start
    events = read_events(RunPaths(config.runs_dir / state.run_id).events)
    loop_time = events[-1]["ts"] - events[0]["ts"]
    assert state.status == "passed" and state.steps == 14
    assert loop_time < export_timeout / 2  # 14 calls + 14 tools + a check, exports in the background
    assert wall < 2 * export_timeout + 2  # shutdown is bounded, not one timeout per span or batch
    assert len(file_spans(RunPaths(config.runs_dir / state.run_id).traces)) == 2 + 14 + 13  # file export unaffected


def test_spans_reach_a_real_otlp_http_receiver(server, make_task, make_config):
    bodies: list[bytes] = []
    received = threading.Event()

    class Receiver(BaseHTTPRequestHandler):
        def do_POST(self):
            data = self.rfile.read(int(self.headers["Content-Length"]))
            if self.path == "/v1/traces":
                bodies.append(data)
                received.set()
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    collector = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=collector.serve_forever, daemon=True).start()
    try:
        run_two_steps(server, make_task, make_config,
                      otlp_endpoint=f"http://127.0.0.1:{collector.server_address[1]}")
        wait_for(received.is_set, what="an OTLP export")
    finally:
        collector.shutdown()
        collector.server_close()
    names = set()
    for body in bodies:
        request = ExportTraceServiceRequest.FromString(body)
        names |= {s.name for rs in request.resource_spans for ss in rs.scope_spans for s in ss.spans}
    assert f"chat {MODEL}" in names and "invoke_agent task" in names
