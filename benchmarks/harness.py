"""Harness overhead per LLM call, and throughput of concurrent loops.

Run: ``.venv/bin/python benchmarks/harness.py [--calls 300]``. A scripted
OpenAI-compatible server (the test suite's, in a child process so it does not
share our GIL) answers every chat request with the same streamed tool call
(``list_dir``). Measured, for the same number of calls and the same responses:

1. bare:   an httpx loop POSTing the same request and parsing the SSE lines;
2. client: :meth:`ChatClient.chat` alone;
3. loop:   full agent steps (chat + telemetry span and metrics + event log
           fsync + the list_dir tool + its span and event + atomic trajectory
           save), timed inside iterations (iteration_started .. turn_ended),
           5 calls per iteration; the bare loops replay the same requests;
   step - tool work: the same, less the time the tool itself ran (from the
           loop's tool_call events): the harness's own cost per call;

then K concurrent runs (K = 1, 4, 8) against the one server, in calls/s.
Not a test: it prints numbers.
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from appliance.harness.client import ChatClient  # noqa: E402
from appliance.harness.loop import RunConfig, run_tasks  # noqa: E402
from appliance.harness.store import read_events  # noqa: E402
from appliance.harness.tools import TOOL_SPECS  # noqa: E402
from tests.harness.conftest import ScriptedServer, closed_port, tool  # noqa: E402

STEPS = 5  # LLM calls per iteration: the history stays short, as in a real Ralph iteration


def serve(ports: multiprocessing.Queue) -> None:
    server = ScriptedServer()
    server.responder = lambda body: tool("list_dir", {})
    ports.put(server.url)
    while True:
        time.sleep(3600)


def bare(url: str, bodies: list[dict], calls: int) -> float:
    with httpx.Client(base_url=url) as http:
        start = time.perf_counter()
        for i in range(calls):
            with http.stream("POST", "/v1/chat/completions", json=bodies[i % len(bodies)]) as response:
                for line in response.iter_lines():
                    if line.startswith("data: ") and line != "data: [DONE]":
                        json.loads(line[6:])
        return time.perf_counter() - start


def client_only(url: str, bodies: list[dict], calls: int) -> float:
    client = ChatClient(url, "tiny-model")
    start = time.perf_counter()
    for i in range(calls):
        client.chat(bodies[i % len(bodies)]["messages"], tools=TOOL_SPECS, tool_choice="auto")
    return time.perf_counter() - start


def loops(url: str, root: Path, k: int, calls: int) -> tuple[float, int, list[dict], float]:
    """K concurrent runs, ``calls`` LLM calls in all, STEPS per iteration (the check fails, so runs go on).

    Returns the time spent inside iterations (checks excluded), the calls made, the
    request bodies of one iteration (for the bare loops to replay), and the time the
    tools themselves took (list_dir, as timed by the loop's tool_call events).
    """
    tasks = []
    for i in range(k):
        task = root / f"k{k}-{time.monotonic_ns()}" / f"task{i}"
        (task / "workspace").mkdir(parents=True)
        (task / "PROMPT.md").write_text("List the workspace.")
        (task / "task.toml").write_text('[check]\ncommand = "exit 1"\n')
        tasks.append(task)
    config = RunConfig(client=ChatClient(url, "tiny-model"), runs_dir=root / "runs",
                       otlp_endpoint=f"http://127.0.0.1:{closed_port()}", model_reflection=False,
                       limit_overrides={"max_steps": STEPS, "max_iterations": max(calls // (k * STEPS), 1)})
    states = run_tasks(tasks, config)
    inside = tools = 0.0
    for s in states:
        started = 0.0
        for e in read_events(config.runs_dir / s.run_id / "events.jsonl"):
            if e["type"] == "iteration_started":
                started = e["ts"]
            elif e["type"] == "turn_ended":
                inside += e["ts"] - started
            elif e["type"] == "tool_call":
                tools += e["duration_s"]
    messages = json.loads((config.runs_dir / states[0].run_id / "trajectory.json").read_text())["messages"]
    bodies = [{"model": "tiny-model", "messages": messages[: 2 + 2 * j], "stream": True,
               "stream_options": {"include_usage": True}, "tools": TOOL_SPECS, "tool_choice": "auto"}
              for j in range(STEPS)]
    return inside / k, sum(s.steps for s in states), bodies, tools / k


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=300)
    parser.add_argument("--dir", type=Path, help="where run dirs go (default: a temp dir; fsync cost depends on it)")
    args = parser.parse_args()
    logging.getLogger("opentelemetry").setLevel(logging.CRITICAL)  # the collector is down on purpose
    ports: multiprocessing.Queue = multiprocessing.Queue()
    child = multiprocessing.Process(target=serve, args=(ports,), daemon=True)
    child.start()
    url = ports.get(timeout=10)
    n = args.calls
    try:
        with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
            t_loop, calls, bodies, t_tools = loops(url, Path(tmp), 1, n)
            bare(url, bodies, 20), client_only(url, bodies, 20)  # warm up
            t_bare, t_client = bare(url, bodies, calls), client_only(url, bodies, calls)
            per = {"bare httpx": t_bare / calls, "ChatClient.chat": t_client / calls, "agent step": t_loop / calls,
                   "step - tool work": (t_loop - t_tools) / calls}
            print(f"{calls} calls, same requests and scripted responses (streamed list_dir tool call)")
            for name, seconds in per.items():
                added = (seconds - per["bare httpx"]) * 1000
                print(f"  {name:16s} {seconds * 1000:7.3f} ms/call  ratio {seconds / per['bare httpx']:5.2f}  "
                      f"added {added:+7.3f} ms/call")
            print("concurrent loops against one server:")
            for k in (1, 4, 8):
                wall, calls, _, _ = loops(url, Path(tmp), k, n)
                print(f"  K={k}: {calls} calls in {wall:.2f} s (in iterations) = {calls / wall:7.1f} calls/s")
    finally:
        child.terminate()


if __name__ == "__main__":
    main()
