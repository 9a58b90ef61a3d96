"""The agent's tools: shell, read_file, write_file, list_dir, confined to a workspace.

Workflow: the loop sends :data:`TOOL_SPECS` with every request and hands each
tool call to :meth:`Toolbox.execute`, which always returns a
:class:`ToolResult` to feed back to the model. Bad argument JSON, wrong types,
unknown tools, paths outside the workspace (``..``, absolute paths, symlinks
pointing out), timeouts and oversized output all come back as error results;
only a missing sandbox (:class:`~appliance.harness.sandbox.SandboxUnavailable`)
escapes, since shell must never run unsandboxed.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from appliance.harness import sandbox

READ_CAP = 64 * 1024
WRITE_CAP = 1024 * 1024
LIST_CAP = 500


class ToolError(Exception):
    """A tool call that cannot be carried out; its message goes back to the model."""


class _Args(BaseModel):
    model_config = ConfigDict(extra="ignore")


class ShellArgs(_Args):
    """Run a shell command (sh -c) in the workspace. No network. Output is capped."""

    command: str = Field(description="the shell command")
    timeout: float | None = Field(default=None, description="seconds; capped by the harness")


class ReadFileArgs(_Args):
    """Read a UTF-8 text file from the workspace (first 64 KiB)."""

    path: str = Field(description="path relative to the workspace")


class WriteFileArgs(_Args):
    """Create or overwrite a file in the workspace with the given content."""

    path: str = Field(description="path relative to the workspace")
    content: str = Field(description="the complete new file content")


class ListDirArgs(_Args):
    """List a directory of the workspace (directories end with /)."""

    path: str = Field(default=".", description="path relative to the workspace")


_ARGS: dict[str, type[_Args]] = {
    "shell": ShellArgs,
    "read_file": ReadFileArgs,
    "write_file": WriteFileArgs,
    "list_dir": ListDirArgs,
}


def _spec(name: str, model: type[_Args]) -> dict[str, Any]:
    schema = model.model_json_schema()
    schema.pop("title", None)
    schema.pop("description", None)
    return {"type": "function", "function": {"name": name, "description": model.__doc__, "parameters": schema}}


TOOL_SPECS: list[dict[str, Any]] = [_spec(name, model) for name, model in _ARGS.items()]


@dataclass
class ToolResult:
    content: str
    is_error: bool = False


@dataclass
class Toolbox:
    workspace: Path
    shell_timeout: float = 60.0
    output_cap: int = 16 * 1024
    cancel: threading.Event | None = None

    def __post_init__(self) -> None:
        self.workspace = self.workspace.resolve()

    def execute(self, name: str, arguments: str) -> ToolResult:
        """Run one tool call; every failure but a missing sandbox is an error result."""
        try:
            args = parse_arguments(name, arguments)
            return ToolResult(getattr(self, f"_{name}")(args))
        except ToolError as exc:
            return ToolResult(f"error: {exc}", is_error=True)
        except OSError as exc:
            return ToolResult(f"error: {exc.strerror or exc}", is_error=True)

    def resolve(self, path: str) -> Path:
        """``path`` inside the workspace; absolute paths and escapes are refused."""
        if not path or "\0" in path:
            raise ToolError(f"invalid path {path!r}")
        if Path(path).is_absolute():
            raise ToolError(f"absolute path {path!r} refused; use a path relative to the workspace")
        target = (self.workspace / path).resolve()
        if not target.is_relative_to(self.workspace):
            raise ToolError(f"path {path!r} leads outside the workspace")
        return target

    def _shell(self, args: ShellArgs) -> str:
        timeout = min(args.timeout or self.shell_timeout, self.shell_timeout)
        done = sandbox.detect().run(
            args.command, self.workspace, timeout=timeout, output_cap=self.output_cap, cancel=self.cancel
        )
        if done.timed_out:
            raise ToolError(f"command timed out after {timeout:g}s; output so far:\n{done.output}")
        return f"exit code: {done.exit_code}\n{done.output}"

    def _read_file(self, args: ReadFileArgs) -> str:
        with open(self.resolve(args.path), "rb") as f:
            data = f.read(READ_CAP + 1)
        text = data[:READ_CAP].decode("utf-8", "replace")
        return text + (f"\n[... truncated at {READ_CAP} bytes ...]" if len(data) > READ_CAP else "")

    def _write_file(self, args: WriteFileArgs) -> str:
        data = args.content.encode("utf-8")
        if len(data) > WRITE_CAP:
            raise ToolError(f"content is {len(data)} bytes; the limit is {WRITE_CAP}")
        target = self.resolve(args.path)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        return f"wrote {len(data)} bytes to {target.relative_to(self.workspace)}"

    def _list_dir(self, args: ListDirArgs) -> str:
        entries = sorted(self.resolve(args.path).iterdir())
        names = [p.name + ("/" if p.is_dir() else "") for p in entries[:LIST_CAP]]
        more = [f"[... {len(entries) - LIST_CAP} more ...]"] if len(entries) > LIST_CAP else []
        return "\n".join(names + more) or "(empty)"


def parse_arguments(name: str, arguments: str) -> _Args:
    """Validate a tool call's raw JSON arguments against the tool's schema."""
    model = _ARGS.get(name)
    if model is None:
        raise ToolError(f"unknown tool {name!r}; available: {', '.join(_ARGS)}")
    try:
        raw = json.loads(arguments or "{}")
    except json.JSONDecodeError as exc:
        raise ToolError(f"arguments are not valid JSON ({exc.msg}): {arguments[:200]!r}") from None
    if not isinstance(raw, dict):
        raise ToolError(f"arguments must be a JSON object, got {type(raw).__name__}")
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'arguments'}: {e['msg']}" for e in exc.errors())
        raise ToolError(f"invalid arguments for {name}: {problems}") from None
