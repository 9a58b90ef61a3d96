"""The loop end to end against the scripted server: iterations, reflection, limits, concurrency."""

from __future__ import annotations

import json

from appliance.harness.loop import REFLECTION_FILE, run_tasks
from appliance.harness.store import RunPaths, read_events

from .conftest import text, tool


def test_passes_on_second_iteration_with_reflection_in_prompt(server, make_task, make_config):
    task = make_task(check="cat done.txt 2>/dev/null | grep -q ok || { echo 'CHECK-SAYS: done.txt missing'; exit 1; }")
    server.script.extend([
        tool("write_file", {"path": "done.txt", "content": "nope"}),
        text("finished"),  # ends the turn: no tool calls
        text("I wrote the wrong content."),  # the model's own reflection
        tool("write_file", {"path": "done.txt", "content": "ok"}),
        text("finished again"),
    ])
    config = make_config(server)
    [state] = run_tasks([task], config)

    assert (state.status, state.iterations, state.steps) == ("passed", 2, 5)
    assert state.input_tokens == 500 and state.output_tokens == 50
    second_iteration_prompt = server.requests[3]["messages"][1]["content"]
    assert "Create done.txt" in second_iteration_prompt
    assert "CHECK-SAYS: done.txt missing" in second_iteration_prompt
    assert "I wrote the wrong content." in second_iteration_prompt
    assert len(server.requests[3]["messages"]) == 2  # a fresh context
    assert "tools" not in server.requests[2] and server.requests[0]["tool_choice"] == "auto"
    assert server.requests[0]["stream_options"] == {"include_usage": True}
    assert (task / "workspace" / REFLECTION_FILE).is_file()

    events = read_events(RunPaths(config.runs_dir / state.run_id).events)
    types = [e["type"] for e in events]
    assert types[0] == "run_started" and types[-1] == "run_finished"
    assert [e["passed"] for e in events if e["type"] == "check_finished"] == [False, True]
    assert all(e["schema"] == "appliance.events/1" for e in events)
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    trajectory = json.loads(RunPaths(config.runs_dir / state.run_id).trajectory.read_text())
    assert trajectory["state"]["status"] == "passed"
    assert trajectory["messages"][-1]["content"] == "finished again"
