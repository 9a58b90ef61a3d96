"""The offline agent harness: a Ralph loop on vLLM's OpenAI-compatible API.

Public API::

    from appliance.harness import ChatClient, RunConfig, run_tasks
    config = RunConfig(client=ChatClient("http://127.0.0.1:8000"), runs_dir=runs_root())
    states = run_tasks([Path("tasks/fizzbuzz")], config)   # -> list[RunState]

Modules: :mod:`~appliance.harness.client` (HTTP/SSE client),
:mod:`~appliance.harness.loop` (the loop), :mod:`~appliance.harness.tools`,
:mod:`~appliance.harness.sandbox`, :mod:`~appliance.harness.telemetry`,
:mod:`~appliance.harness.task`, :mod:`~appliance.harness.store` (the run
record, also read by :mod:`appliance.export`). Names are imported lazily so
that ``appliance.harness.store`` stays light.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "ChatClient": "client", "ChatResult": "client", "RetryPolicy": "client", "ClientError": "client",
    "ServerUnavailable": "client", "RequestRejected": "client", "MalformedResponse": "client",
    "RunConfig": "loop", "RunState": "loop", "Agent": "loop", "run_tasks": "loop", "new_run": "loop",
    "resume_run": "loop", "Task": "task", "Limits": "task", "load_task": "task", "TaskError": "task",
    "Toolbox": "tools", "SandboxUnavailable": "sandbox", "runs_root": "store", "read_events": "store",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'appliance.harness' has no attribute {name!r}")
    return getattr(importlib.import_module(f"appliance.harness.{_EXPORTS[name]}"), name)
