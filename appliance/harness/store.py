"""The on-disk record of runs: layout, event log and trajectory.

A run lives in ``<runs root>/<run id>/``::

    events.jsonl         one JSON event per line, fsync'd line by line (docs/events.md)
    trajectory.json      run state + messages of the current iteration, replaced atomically
    traces.otlp.jsonl    one OTLP ExportTraceServiceRequest (JSON) per line
    snapshot/            the workspace as it was when the run started

The runs root is ``--runs-dir``, else ``$APPLIANCE_RUNS_DIR``, else
``platformdirs.user_data_dir("appliance")/runs``. Writers are the harness loop;
readers are the loop (``--resume``) and :mod:`appliance.export`. This module
imports nothing heavy so that export stays light.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from appliance._internal.paths import runs_root  # noqa: F401  (re-exported: the runs root)
from appliance.errors import HarnessError

EVENTS_SCHEMA = "appliance.events/1"
TRAJECTORY_SCHEMA = "appliance.trajectory/1"


class RunNotFound(HarnessError):
    """No run with that id (or prefix) under the runs root."""


class CorruptRecord(HarnessError):
    """An event log or trajectory is unreadable beyond a torn last line."""


@dataclass(frozen=True)
class RunPaths:
    """File names inside one run directory."""

    dir: Path

    @property
    def run_id(self) -> str:
        return self.dir.name

    @property
    def events(self) -> Path:
        return self.dir / "events.jsonl"

    @property
    def trajectory(self) -> Path:
        return self.dir / "trajectory.json"

    @property
    def traces(self) -> Path:
        return self.dir / "traces.otlp.jsonl"

    @property
    def snapshot(self) -> Path:
        return self.dir / "snapshot"


def find_run(root: Path, run: str) -> RunPaths:
    """The run named ``run`` (an id, a unique id prefix, or a run directory path)."""
    if os.sep in run and (Path(run) / "trajectory.json").is_file():
        return RunPaths(Path(run))
    exact = root / run
    if (exact / "trajectory.json").is_file():
        return RunPaths(exact)
    matches = [p for p in list_run_dirs(root) if p.name.startswith(run)]
    if len(matches) != 1:
        why = "no run" if not matches else f"{len(matches)} runs"
        raise RunNotFound(f"{why} matching {run!r} under {root}")
    return RunPaths(matches[0])


def list_run_dirs(root: Path) -> list[Path]:
    """Run directories under ``root``, oldest first (run ids sort by start time)."""
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if (p / "trajectory.json").is_file())


class EventLog:
    """Append-only JSONL event log; every line is flushed and fsync'd before emit returns.

    Reopening a log (``--resume``) first cuts a torn last line left by a kill.
    """

    def __init__(self, path: Path, run_id: str):
        self.run_id = run_id
        _cut_torn_tail(path)
        self.seq = len(read_events(path)) if path.exists() else 0
        self._file = open(path, "a", encoding="utf-8")

    def emit(self, type: str, **fields: Any) -> None:
        self.seq += 1
        event = {"schema": EVENTS_SCHEMA, "seq": self.seq, "ts": time.time(), "run_id": self.run_id, "type": type}
        self._file.write(json.dumps(event | fields, default=str) + "\n")
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self) -> None:
        self._file.close()


def _cut_torn_tail(path: Path) -> None:
    if not path.exists():
        return
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        with open(path, "r+b") as f:
            f.truncate(data.rfind(b"\n") + 1)


def read_events(path: Path) -> list[dict[str, Any]]:
    """All events of a log; a torn (unterminated, unparsable) last line is dropped."""
    text = path.read_text(encoding="utf-8", errors="replace")
    lines = text.split("\n")
    torn = lines.pop()  # "" when the file ends with a newline
    events = []
    for number, line in enumerate(lines, 1):
        try:
            events.append(json.loads(line))
        except json.JSONDecodeError as exc:
            raise CorruptRecord(f"{path}:{number}: not JSON ({exc})") from None
    if torn:
        try:
            events.append(json.loads(torn))
        except json.JSONDecodeError:
            pass
    return events


def write_json_atomic(path: Path, data: Any, *, durable: bool = True) -> None:
    """Replace ``path`` with ``data`` as JSON: write a temp file, fsync (when ``durable``), rename."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f, default=str)
        if durable:
            f.flush()
            os.fsync(f.fileno())
    os.replace(tmp, path)


def read_trajectory(paths: RunPaths) -> dict[str, Any]:
    try:
        return json.loads(paths.trajectory.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise CorruptRecord(f"{paths.trajectory}: {exc}") from None
