"""The agent loop: a Ralph loop with a check as backpressure and reflexion between tries.

Workflow of one run (:class:`Agent`)::

    for each iteration (fresh context: system prompt + PROMPT.md + latest reflection):
        step until the model ends its turn (no tool calls, or finish_reason "stop"):
            query the model, execute its tool calls, save the trajectory
        run the check in the sandbox: exit 0 -> the run passed
        else write workspace/.appliance/reflection.md (check output tail + the
        model's own short reflection) for the next iteration

Control flow is by exceptions: :class:`TurnEnded` ends an iteration's turn,
:class:`Stop` (``Passed``, ``LimitReached``, ``Interrupted``) ends the run.
State lives in the workspace; run state (iterations, tokens, elapsed time) is
in ``trajectory.json``, saved after every step, so ``--resume`` picks a run up
where it stopped. :func:`run_tasks` runs several tasks concurrently against
one server.
"""

from __future__ import annotations

import secrets
import shutil
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from opentelemetry.sdk.metrics.export import MetricReader
from opentelemetry.sdk.trace.export import SpanExporter

from appliance.errors import HarnessError
from appliance.harness import sandbox, store
from appliance.harness.client import Cancelled, ChatClient, ChatResult, ClientError
from appliance.harness.task import Limits, Task, load_task
from appliance.harness.telemetry import DEFAULT_OTLP_ENDPOINT, Telemetry
from appliance.harness.tools import TOOL_SPECS, Toolbox, ToolError, parse_arguments

SYSTEM_PROMPT = """You are an autonomous agent working on a task in a workspace directory.
Use the tools to inspect and change files; paths are relative to the workspace.
The shell runs in the workspace with no network access.
When you believe the task is done, reply without calling any tool; a check will then verify your work.
If the check fails you will start again from the task with a reflection on what went wrong."""

REFLECTION_PROMPT = """The check for this task failed. In at most three short sentences, say what most
likely went wrong and what to do differently next time. No preamble."""

REFLECTION_FILE = Path(".appliance/reflection.md")
_TAIL = 2000  # characters of check output kept in events and reflections


class Stop(Exception):
    """Ends the run with ``status``; the message is the reason."""

    status = "failed"


class Passed(Stop):
    status = "passed"


class LimitReached(Stop):
    status = "failed"


class Interrupted(Stop):
    status = "interrupted"


class TurnEnded(Exception):
    """The model ended its turn; the message says why."""


class RunFinished(HarnessError):
    """``--resume`` of a run that already passed or failed."""


@dataclass
class RunConfig:
    """How runs talk to the server and record themselves (shared by concurrent runs)."""

    client: ChatClient
    runs_dir: Path
    otlp_endpoint: str | None = DEFAULT_OTLP_ENDPOINT
    export_timeout: float = 1.0
    capture_content: bool = False
    model_reflection: bool = True
    tool_choice: str = "auto"
    max_completion_tokens: int | None = None
    temperature: float | None = None
    wait_ready_s: float = 120.0
    limit_overrides: dict[str, Any] = field(default_factory=dict)
    cancel: threading.Event = field(default_factory=threading.Event)
    span_exporters: list[SpanExporter] = field(default_factory=list)  # extra, e.g. in-memory for tests
    metric_readers: list[MetricReader] = field(default_factory=list)


@dataclass
class RunState:
    run_id: str
    task_dir: str
    limits: dict[str, Any]
    status: str = "running"  # running | passed | failed | interrupted | error
    reason: str = ""
    iterations: int = 0  # completed iterations (the check ran)
    steps: int = 0  # LLM calls over the run
    input_tokens: int = 0
    output_tokens: int = 0
    elapsed_s: float = 0.0
    started_at: str = ""
    model: str = ""


class Agent:
    """One run of one task."""

    def __init__(self, task: Task, paths: store.RunPaths, state: RunState, config: RunConfig):
        self.task, self.paths, self.state, self.config = task, paths, state, config
        self.limits = Limits(**state.limits)
        self.client = config.client
        self.tools = Toolbox(task.workspace, self.limits.shell_timeout, self.limits.output_cap, config.cancel)
        self.messages: list[dict[str, Any]] = []
        self.iteration = state.iterations + 1  # the iteration under way (its LLM calls, tools, reflection)
        self._clock = (time.monotonic(), state.elapsed_s)

    def run(self) -> RunState:
        self.events = store.EventLog(self.paths.events, self.state.run_id)
        self.telemetry = Telemetry(
            self.paths.traces, otlp_endpoint=self.config.otlp_endpoint, capture_content=self.config.capture_content,
            export_timeout=self.config.export_timeout, span_exporters=self.config.span_exporters,
            metric_readers=self.config.metric_readers, run_id=self.state.run_id,
        )
        self.events.emit("run_started" if self.state.steps == 0 else "run_resumed", **self._progress(),
                         task_dir=self.state.task_dir, model=self.client.model, limits=self.state.limits)
        try:
            with self.telemetry.agent(self.task.name, self.state.run_id, self.client) as span:
                try:
                    while True:
                        self.iterate()
                except Stop as stop:
                    self.state.status, self.state.reason = stop.status, str(stop)
                except Cancelled:
                    self.state.status, self.state.reason = "interrupted", "interrupted"
                except HarnessError as exc:
                    self.state.status, self.state.reason = "error", f"{type(exc).__name__}: {exc}"
                self.telemetry.outcome(span, self.state.status, self.state.reason)
        finally:
            self.save(durable=True)
            self.events.emit("run_finished", status=self.state.status, reason=self.state.reason, **self._progress())
            self.events.close()
            self.telemetry.shutdown()
        return self.state

    def iterate(self) -> None:
        self.check_limits()
        if self.state.iterations >= self.limits.max_iterations:
            raise LimitReached(f"max_iterations ({self.limits.max_iterations}) reached")
        number = self.iteration = self.state.iterations + 1
        self.messages = self.initial_messages()
        with self.telemetry.iteration(number):
            reflection = (self.task.workspace / REFLECTION_FILE).is_file()
            self.events.emit("iteration_started", iteration=number, reflection=reflection)
            try:
                for _ in range(self.limits.max_steps):
                    self.step()
                raise TurnEnded("max_steps")
            except TurnEnded as end:
                self.events.emit("turn_ended", iteration=number, reason=str(end))
            self.save(durable=True)
            self.check(number)

    def step(self) -> None:
        try:
            result = self.query(self.messages, tools=TOOL_SPECS, tool_choice=self.config.tool_choice)
            self.messages.append(_assistant_message(result))
            for call in result.tool_calls:
                self.execute(call.id, call.name, call.arguments)
            if not result.tool_calls:
                raise TurnEnded("no_tool_calls")
            if result.finish_reason == "stop":
                raise TurnEnded("finish_reason_stop")
        finally:
            self.save()

    def query(self, messages: list[dict[str, Any]], **options: Any) -> ChatResult:
        self.check_limits()
        start = time.perf_counter()
        with self.telemetry.chat(self.client, messages) as recorder:
            options = {"max_tokens": self.config.max_completion_tokens, "temperature": self.config.temperature} | options
            result = self.client.chat(messages, cancel=self.config.cancel, **options)
            recorder.record(result)
        self.state.steps += 1
        self.state.input_tokens += result.input_tokens
        self.state.output_tokens += result.output_tokens
        self.events.emit("llm_call", iteration=self.iteration, step=self.state.steps,
                         response_id=result.id, model=result.model, finish_reason=result.finish_reason,
                         input_tokens=result.input_tokens, output_tokens=result.output_tokens,
                         tool_calls=[c.name for c in result.tool_calls], duration_s=time.perf_counter() - start)
        return result

    def execute(self, call_id: str, name: str, arguments: str) -> None:
        start = time.perf_counter()
        with self.telemetry.tool(name, call_id, arguments) as span:
            result = self.tools.execute(name, arguments)
            self.telemetry.tool_result(span, result.content, result.is_error, name)
        self.messages.append({"role": "tool", "tool_call_id": call_id, "content": result.content})
        self.events.emit("tool_call", iteration=self.iteration, tool_call_id=call_id, name=name,
                         is_error=result.is_error, duration_s=time.perf_counter() - start)

    def check(self, number: int) -> None:
        start = time.perf_counter()
        done = sandbox.detect().run(self.task.check_command, self.task.workspace, timeout=self.limits.check_timeout,
                                    output_cap=self.limits.output_cap, read_only=(self.task.dir,),
                                    cancel=self.config.cancel)
        self.state.iterations = number
        passed = done.exit_code == 0
        self.telemetry.check_result(passed)
        self.events.emit("check_finished", iteration=number, exit_code=done.exit_code, passed=passed,
                         timed_out=done.timed_out, duration_s=time.perf_counter() - start,
                         output_tail=done.output[-_TAIL:])
        if passed:
            raise Passed(f"check passed on iteration {number}")
        self.check_limits()  # an interrupted check is no reason to reflect
        self.reflect(number, done)

    def reflect(self, number: int, done: sandbox.Completed) -> None:
        """Write the reflection the next iteration starts from."""
        tail = done.output[-_TAIL:]
        exit_text = "timed out" if done.timed_out else f"exit code {done.exit_code}"
        text = f"Attempt {number} failed the check ({exit_text}). End of the check output:\n```\n{tail}\n```\n"
        if self.config.model_reflection:
            prompt = f"Task:\n{self.task.prompt[:_TAIL]}\n\nCheck output (end):\n{tail}\n\n{REFLECTION_PROMPT}"
            cap = min(200, self.config.max_completion_tokens or 200)
            answer = self.query([{"role": "user", "content": prompt}], max_tokens=cap).content.strip()
            text += f"\nReflection:\n{answer[:1000]}\n"
        path = self.task.workspace / REFLECTION_FILE
        path.parent.mkdir(exist_ok=True)
        path.write_text(text, encoding="utf-8")
        self.events.emit("reflection_written", iteration=number, path=str(REFLECTION_FILE), chars=len(text))

    def initial_messages(self) -> list[dict[str, Any]]:
        prompt = self.task.prompt
        reflection = self.task.workspace / REFLECTION_FILE
        if reflection.is_file():
            prompt += "\n\n## Reflection on the previous attempt\n\n" + reflection.read_text(encoding="utf-8")
        return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": prompt}]

    def check_limits(self) -> None:
        if self.config.cancel.is_set():
            raise Interrupted("interrupted")
        if self.state.input_tokens + self.state.output_tokens >= self.limits.max_tokens:
            raise LimitReached(f"max_tokens ({self.limits.max_tokens}) reached")
        if self.elapsed() >= self.limits.max_seconds:
            raise LimitReached(f"max_seconds ({self.limits.max_seconds:g}) reached")

    def elapsed(self) -> float:
        started, before = self._clock
        return before + time.monotonic() - started

    def save(self, durable: bool = False) -> None:
        """Replace trajectory.json (atomic: a kill -9 leaves the old or the new one). Per step it is not
        fsync'd: events.jsonl, fsync'd line by line, is the durable record; turn and run ends are."""
        self.state.elapsed_s = self.elapsed()
        store.write_json_atomic(self.paths.trajectory, {
            "schema": store.TRAJECTORY_SCHEMA, "state": asdict(self.state), "messages": self.messages,
        }, durable=durable)

    def _progress(self) -> dict[str, Any]:
        s = self.state
        return {"iterations": s.iterations, "steps": s.steps, "input_tokens": s.input_tokens,
                "output_tokens": s.output_tokens, "elapsed_s": round(self.elapsed(), 3)}


def _assistant_message(result: ChatResult) -> dict[str, Any]:
    """The assistant turn for the history; unparsable arguments are replaced by ``{}``
    (the tool result carries the error), since servers re-parse arguments of past calls."""
    message: dict[str, Any] = {"role": "assistant", "content": result.content}
    if result.tool_calls:
        calls = [c.message() for c in result.tool_calls]
        for call in calls:
            try:
                parse_arguments(call["function"]["name"], call["function"]["arguments"])
            except ToolError:
                call["function"]["arguments"] = "{}"
        message["tool_calls"] = calls
    return message


def new_run(task: Task, config: RunConfig) -> Agent:
    """Create the run directory (with a workspace snapshot) for a fresh run of ``task``."""
    now = datetime.now(timezone.utc)
    run_id = f"{now:%Y%m%dT%H%M%S}Z-{task.name}-{secrets.token_hex(3)}"
    paths = store.RunPaths(config.runs_dir / run_id)
    paths.dir.mkdir(parents=True)
    shutil.copytree(task.workspace, paths.snapshot, symlinks=True)
    state = RunState(run_id, str(task.dir), asdict(task.limits), started_at=now.isoformat(),
                     model=config.client.model or "")
    agent = Agent(task, paths, state, config)
    agent.save(durable=True)
    return agent


def resume_run(run: str, config: RunConfig) -> Agent:
    """Pick up a run that was interrupted, killed or stopped by an error, as recorded."""
    paths = store.find_run(config.runs_dir, run)
    state = RunState(**store.read_trajectory(paths)["state"])
    if state.status in ("passed", "failed"):
        raise RunFinished(f"run {state.run_id} already {state.status}: {state.reason}")
    state.status, state.reason = "running", ""
    task = load_task(Path(state.task_dir))
    state.limits = asdict(Limits(**state.limits).updated(config.limit_overrides))
    return Agent(task, paths, state, config)


def run_tasks(task_dirs: Sequence[Path], config: RunConfig, resume: Sequence[str] = ()) -> list[RunState]:
    """Wait for the server, then run every task (and resumed run) concurrently."""
    sandbox.detect()  # refuse to start at all without a sandbox
    tasks = [load_task(d, config.limit_overrides) for d in task_dirs]
    config.client.wait_ready(config.wait_ready_s, config.cancel)
    agents = [resume_run(r, config) for r in resume] + [new_run(t, config) for t in tasks]
    if len(agents) == 1:
        return [agents[0].run()]
    with ThreadPoolExecutor(max_workers=len(agents), thread_name_prefix="run") as pool:
        return list(pool.map(Agent.run, agents))
