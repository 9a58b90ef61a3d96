"""A task directory and the limits a run works under.

Layout::

    TASK_DIR/
      PROMPT.md          the task, sent unchanged at the start of every iteration
      workspace/         the files the agent works on (the run's only state)
      check.sh           the check: exit 0 = done (or [check] command in task.toml)
      task.toml          optional: [check] command/timeout, [limits] (see Limits)
"""

from __future__ import annotations

import shlex
import tomllib
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from appliance.errors import HarnessError


class TaskError(HarnessError):
    """A task directory is missing a part or has an invalid task.toml."""


@dataclass(frozen=True)
class Limits:
    max_iterations: int = 5
    max_steps: int = 30  # LLM calls per iteration before the turn is ended for it
    max_tokens: int = 500_000  # input + output tokens over the whole run
    max_seconds: float = 3600.0  # wall time over the whole run, across resumes
    shell_timeout: float = 60.0
    check_timeout: float = 300.0
    output_cap: int = 16 * 1024  # bytes of tool / check output kept

    def updated(self, values: dict[str, Any]) -> Limits:
        """A copy with the non-None ``values`` applied; unknown names are an error."""
        known = {f.name: f.type for f in fields(self)}
        unknown = set(values) - set(known)
        if unknown:
            raise TaskError(f"unknown limits: {', '.join(sorted(unknown))}")
        try:
            typed = {k: type(getattr(self, k))(v) for k, v in values.items() if v is not None}
        except (TypeError, ValueError) as exc:
            raise TaskError(f"invalid limit value: {exc}") from None
        return replace(self, **typed)


@dataclass(frozen=True)
class Task:
    dir: Path
    prompt: str
    check_command: str
    limits: Limits

    @property
    def name(self) -> str:
        return self.dir.name

    @property
    def workspace(self) -> Path:
        return self.dir / "workspace"


def load_task(task_dir: Path, overrides: dict[str, Any] | None = None) -> Task:
    """Read a task directory; ``overrides`` (e.g. CLI flags) win over task.toml limits."""
    task_dir = task_dir.resolve()
    if not (task_dir / "PROMPT.md").is_file():
        raise TaskError(f"{task_dir}: no PROMPT.md")
    if not (task_dir / "workspace").is_dir():
        raise TaskError(f"{task_dir}: no workspace/ directory")
    config: dict[str, Any] = {}
    if (task_dir / "task.toml").is_file():
        try:
            config = tomllib.loads((task_dir / "task.toml").read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as exc:
            raise TaskError(f"{task_dir}/task.toml: {exc}") from None
    check = config.get("check", {})
    command = check.get("command")
    if not command and (task_dir / "check.sh").is_file():
        command = f"sh {shlex.quote(str(task_dir / 'check.sh'))}"
    if not command:
        raise TaskError(f"{task_dir}: no check.sh and no [check] command in task.toml")
    limits = Limits().updated(config.get("limits", {}))
    if "timeout" in check:
        limits = limits.updated({"check_timeout": check["timeout"]})
    return Task(task_dir, (task_dir / "PROMPT.md").read_text(encoding="utf-8"), command,
                limits.updated(overrides or {}))
