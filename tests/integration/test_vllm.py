"""The harness against a real vLLM server on CPU serving a tiny random Llama (docs/vllm.md).

The model's text and tool-call arguments are noise, so these tests check mechanics only:
streaming, usage, forced tool calls, and a whole `appliance run` with its event log and
OTLP-JSON trace. Noise arguments must come back as tool errors, never as a crash.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from appliance.harness.client import ChatClient, RetryPolicy
from appliance.harness.store import RunPaths, list_run_dirs, read_events, read_trajectory
from appliance.harness.tools import TOOL_SPECS, Toolbox

from .conftest import VllmServer

pytestmark = pytest.mark.vllm

TOOL_NAMES = {spec["function"]["name"] for spec in TOOL_SPECS}
MESSAGES = [{"role": "system", "content": "You are a test."}, {"role": "user", "content": "Create done.txt."}]
SPAN_KIND_CLIENT = 3  # OTLP SpanKind enum


@pytest.fixture
def client(vllm_server: VllmServer) -> Iterator[ChatClient]:
    c = ChatClient(vllm_server.url, vllm_server.model, retry=RetryPolicy(attempts=2, base_s=0.1), read_timeout=120)
    yield c
    c.close()


def test_streamed_chat_has_content_finish_reason_and_usage(client: ChatClient, vllm_server: VllmServer):
    assert client.wait_ready(timeout=60) == "tiny-llama"
    result = client.chat(MESSAGES, max_tokens=16, temperature=0)
    assert result.id and result.model == "tiny-llama", vllm_server.tail()
    assert result.finish_reason in ("length", "stop")
    assert result.input_tokens > 0
    assert 0 < result.output_tokens <= 16
    assert result.tool_calls == []
    if result.finish_reason == "length":
        assert result.content, "16 tokens of a byte-level BPE decode to some text"


@pytest.mark.parametrize("tool_choice", [
    pytest.param({"type": "function", "function": {"name": "write_file"}}, id="named"),
    pytest.param("required", id="required"),
])
def test_forced_tool_call_comes_back_as_a_tool_call(client: ChatClient, tool_choice: Any, tmp_path: Path):
    result = client.chat(MESSAGES, tools=TOOL_SPECS, tool_choice=tool_choice, max_tokens=32)
    assert result.tool_calls, f"no tool call: {result}"
    for call in result.tool_calls:
        assert call.id
        if isinstance(tool_choice, dict):
            assert call.name == tool_choice["function"]["name"]
        else:
            assert call.name in TOOL_NAMES
        # Arguments are noise (often cut off by max_tokens): an error result, never an exception.
        (tmp_path / "ws").mkdir(exist_ok=True)
        outcome = Toolbox(tmp_path / "ws", shell_timeout=5).execute(call.name, call.arguments)
        assert isinstance(outcome.content, str) and outcome.content
    assert result.input_tokens > 0 and result.output_tokens > 0
    assert result.finish_reason in ("tool_calls", "length", "stop")


def test_auto_tool_choice_answers_with_text_or_tool_calls(client: ChatClient):
    result = client.chat(MESSAGES, tools=TOOL_SPECS, tool_choice="auto", max_tokens=16)
    assert result.finish_reason in ("length", "stop", "tool_calls")
    assert result.content or result.tool_calls
    assert all(call.name for call in result.tool_calls)


def _spans(traces: Path) -> list[dict[str, Any]]:
    spans = []
    for line in traces.read_text(encoding="utf-8").splitlines():
        for resource in json.loads(line)["resourceSpans"]:
            for scope in resource["scopeSpans"]:
                spans += scope["spans"]
    return spans


def _attributes(span: dict[str, Any]) -> dict[str, Any]:
    """OTLP JSON attributes as a plain dict (int64 values come as strings in OTLP JSON)."""
    out = {}
    for attribute in span.get("attributes", []):
        (kind, value), = attribute["value"].items()
        out[attribute["key"]] = int(value) if kind == "intValue" else value
    return out


def test_appliance_run_against_vllm_records_events_and_traces(vllm_server: VllmServer, tmp_path: Path):
    task = tmp_path / "tasks" / "make-done"
    (task / "workspace").mkdir(parents=True)
    (task / "PROMPT.md").write_text("Create done.txt in the workspace containing the word ok.\n")
    (task / "check.sh").write_text("grep -qx appliance-integration-sentinel done.txt\n")  # noise never passes
    runs = tmp_path / "runs"
    argv = [sys.executable, "-m", "appliance", "run", str(task), "--base-url", vllm_server.url,
            "--model", vllm_server.model, "--tool-choice", "required", "--max-iterations", "2",
            "--max-steps", "3", "--max-completion-tokens", "32", "--otlp-endpoint", "none",
            "--wait-seconds", "60", "--runs-dir", str(runs)]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    report = (f"exit {done.returncode}\nstdout:\n{done.stdout}\nstderr:\n{done.stderr}\n"
              f"server log (end):\n{vllm_server.tail(2000)}")
    assert done.returncode == 1, report
    assert "Traceback" not in done.stderr, report
    [run_dir] = list_run_dirs(runs)
    assert f"{run_dir.name}\tfailed\titerations=2" in done.stdout, report

    # events.jsonl (docs/events.md)
    events = read_events(RunPaths(run_dir).events)
    types = [e["type"] for e in events]
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    assert all(e["schema"] == "appliance.events/1" and e["run_id"] == run_dir.name for e in events)
    assert types[0] == "run_started" and types[-1] == "run_finished", types
    assert events[0]["model"] == "tiny-llama"
    assert events[0]["limits"]["max_iterations"] == 2 and events[0]["limits"]["max_steps"] == 3
    assert [e["iteration"] for e in events if e["type"] == "iteration_started"] == [1, 2]
    llm_calls = [e for e in events if e["type"] == "llm_call"]
    assert llm_calls and all(e["input_tokens"] > 0 and e["output_tokens"] > 0 for e in llm_calls), llm_calls
    assert all(e["model"] == "tiny-llama" and e["response_id"] for e in llm_calls)
    tool_calls = [e for e in events if e["type"] == "tool_call"]
    assert tool_calls, types  # tool_choice=required: every loop step calls a tool
    assert all(e["name"] in TOOL_NAMES and isinstance(e["is_error"], bool) for e in tool_calls), tool_calls
    assert sum(len(e["tool_calls"]) for e in llm_calls) == len(tool_calls)
    assert [e["iteration"] for e in events if e["type"] == "turn_ended"] == [1, 2]
    checks = [e for e in events if e["type"] == "check_finished"]
    assert [(c["iteration"], c["passed"], c["timed_out"]) for c in checks] == [(1, False, False), (2, False, False)]
    assert all(c["exit_code"] not in (0, None) for c in checks), checks
    assert "reflection_written" in types
    finished = events[-1]
    assert finished["status"] == "failed" and "max_iterations" in finished["reason"], finished
    assert finished["iterations"] == 2 and finished["steps"] == len(llm_calls)
    assert finished["input_tokens"] == sum(e["input_tokens"] for e in llm_calls)
    assert finished["output_tokens"] == sum(e["output_tokens"] for e in llm_calls)
    assert read_trajectory(RunPaths(run_dir))["state"]["status"] == "failed"

    # traces.otlp.jsonl: GenAI semconv span names and attributes, one trace, proper nesting
    spans = _spans(RunPaths(run_dir).traces)
    by_id = {s["spanId"]: s for s in spans}
    names = [s["name"] for s in spans]
    [agent] = [s for s in spans if s["name"] == "invoke_agent make-done"]
    assert _attributes(agent)["gen_ai.operation.name"] == "invoke_agent"
    assert _attributes(agent)["appliance.run.status"] == "failed"
    assert {s["traceId"] for s in spans} == {agent["traceId"]}
    assert sorted(n for n in names if n.startswith("iteration ")) == ["iteration 1", "iteration 2"]
    chats = [s for s in spans if s["name"] == "chat tiny-llama"]
    assert len(chats) == len(llm_calls), names
    for span in chats:
        attributes = _attributes(span)
        assert span["kind"] == SPAN_KIND_CLIENT
        assert attributes["gen_ai.operation.name"] == "chat"
        assert attributes["gen_ai.request.model"] == "tiny-llama"
        assert attributes["gen_ai.response.model"] == "tiny-llama"
        assert attributes["gen_ai.usage.input_tokens"] > 0 and attributes["gen_ai.usage.output_tokens"] > 0
        assert attributes["server.address"] == "127.0.0.1" and attributes["server.port"] == int(
            vllm_server.url.rsplit(":", 1)[1])
    assert sum(_attributes(s)["gen_ai.usage.input_tokens"] for s in chats) == finished["input_tokens"]
    tools = [s for s in spans if s["name"].startswith("execute_tool ")]
    assert sorted(s["name"] for s in tools) == sorted(f"execute_tool {e['name']}" for e in tool_calls)
    for span in tools:
        attributes = _attributes(span)
        assert attributes["gen_ai.operation.name"] == "execute_tool"
        assert span["name"] == f"execute_tool {attributes['gen_ai.tool.name']}"
        assert by_id[span["parentSpanId"]]["name"].startswith("iteration ")
    errors = sum(e["is_error"] for e in tool_calls)
    assert sum(s.get("status", {}).get("code") == 2 for s in tools) == errors
    for span in chats:
        parent = by_id[span["parentSpanId"]]
        assert parent["name"].startswith("iteration ") and parent["parentSpanId"] == agent["spanId"]
