"""The loop end to end against the scripted server: iterations, reflection, limits, concurrency."""

from __future__ import annotations

import json

from appliance.harness.loop import REFLECTION_FILE, run_tasks
from appliance.harness.store import RunPaths, read_events

from .conftest import Reply, text, tool


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
    # the reflection call belongs to the iteration whose check failed
    assert [e["iteration"] for e in events if e["type"] == "llm_call"] == [1, 1, 1, 2, 2]
    trajectory = json.loads(RunPaths(config.runs_dir / state.run_id).trajectory.read_text())
    assert trajectory["state"]["status"] == "passed"
    assert trajectory["messages"][-1]["content"] == "finished again"


def solver(body):
    """A stateless model for concurrent runs: write done.txt, then end the turn."""
    messages = body["messages"]
    if "tools" not in body:
        return text("reflection")
    if messages[-1]["role"] == "tool":
        return text("done")
    return tool("write_file", {"path": "done.txt", "content": messages[1]["content"]})


def test_three_concurrent_runs_share_one_server(server, make_task, make_config):
    server.responder = solver
    tasks = [make_task(f"t{i}", prompt=f"task number {i}") for i in range(3)]
    config = make_config(server)
    states = run_tasks(tasks, config)
    assert [s.status for s in states] == ["passed"] * 3
    assert len({s.run_id for s in states}) == 3
    for i, task in enumerate(tasks):
        assert (task / "workspace" / "done.txt").read_text() == f"task number {i}"
    assert len(server.requests) == 6


def test_iteration_limit_fails_the_run(server, make_task, make_config):
    server.responder = lambda body: text("nothing to do")
    task = make_task(toml='[check]\ncommand = "exit 1"\n[limits]\nmax_iterations = 2\n')
    [state] = run_tasks([task], make_config(server, model_reflection=False))
    assert (state.status, state.iterations, state.steps) == ("failed", 2, 2)
    assert "max_iterations (2)" in state.reason


def test_token_and_step_limits(server, make_task, make_config):
    server.responder = lambda body: tool("list_dir", {})
    task = make_task(check="exit 1")
    config = make_config(server, model_reflection=False, limit_overrides={"max_steps": 3, "max_tokens": 700})
    [state] = run_tasks([task], config)
    # 3 steps (110 tokens each) end iterations 1 and 2 by max_steps; iteration 3 stops at 770 >= 700 tokens.
    assert (state.status, state.iterations, state.steps) == ("failed", 2, 7)
    assert "max_tokens (700)" in state.reason


def test_malformed_tool_arguments_go_back_to_the_model(server, make_task, make_config):
    server.script.extend([tool("write_file", '{"path": "done.txt", "content": '), tool("frobnicate", "{}"),
                          tool("write_file", {"path": "done.txt", "content": "x"}), text("ok")])
    [state] = run_tasks([make_task()], make_config(server))
    assert state.status == "passed"
    history = server.requests[3]["messages"]
    assert history[2]["tool_calls"][0]["function"]["arguments"] == "{}"  # sanitized for the server
    assert "arguments are not valid JSON" in history[3]["content"]
    assert "unknown tool 'frobnicate'" in history[5]["content"]


def test_server_error_ends_the_run_with_status_error_and_it_resumes(server, make_task, make_config):
    from appliance.harness.loop import resume_run

    server.script.extend([tool("write_file", {"path": "done.txt", "content": "x"}), Reply(status=400)])
    config = make_config(server)
    [state] = run_tasks([make_task()], config)
    assert state.status == "error" and "HTTP 400" in state.reason
    server.script.append(text("done now"))
    resumed = resume_run(state.run_id, config).run()
    assert (resumed.status, resumed.iterations, resumed.steps) == ("passed", 1, 2)
    events = read_events(RunPaths(config.runs_dir / state.run_id).events)
    assert [e["type"] for e in events].count("run_resumed") == 1


def test_malformed_sse_ends_the_run_with_a_clear_error(server, make_task, make_config):
    server.script.append(Reply(raw=b"data: {oops\n\n"))
    [state] = run_tasks([make_task()], make_config(server))
    assert state.status == "error" and "MalformedResponse: bad JSON in an SSE data line" in state.reason
