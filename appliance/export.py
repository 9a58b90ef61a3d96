"""List, show and export recorded runs.

Workflow::

    runs = list_runs(runs_root())              # [RunSummary], oldest first
    summary = summarize(find_run(root, "2025"))  # a dict, as summary.json
    export_run(root, run_id, Path("run.tar.gz"))
    export_all(root, Path("exports/"))         # a directory: one tar per run; a .tar[.gz] name: one tar

An export is a tar (gzip when the name ends in .gz/.tgz) holding, under
``<run id>/``: ``events.jsonl``, ``traces.otlp.jsonl``, ``trajectory.json``,
``summary.json`` and ``workspace.diff``, a unified diff (difflib) of the
workspace snapshot taken at the start against the workspace now. This stage
reads run directories only; it never imports the loop.
"""

from __future__ import annotations

import difflib
import io
import json
import os
import tarfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from appliance.harness.store import RunPaths, find_run, list_run_dirs, read_events, read_trajectory

_DIFF_MAX_BYTES = 1024 * 1024  # larger files are reported, not diffed


def summarize(paths: RunPaths) -> dict[str, Any]:
    """The run's state plus counts from its event log (what summary.json holds)."""
    state = read_trajectory(paths)["state"]
    events = read_events(paths.events) if paths.events.exists() else []
    checks = [e for e in events if e.get("type") == "check_finished"]
    return state | {
        "events": dict(Counter(e.get("type") for e in events)),
        "checks": [{"iteration": e["iteration"], "passed": e["passed"], "exit_code": e["exit_code"]} for e in checks],
        "run_dir": str(paths.dir),
    }


def list_runs(root: Path) -> list[dict[str, Any]]:
    """The trajectory state of every run under ``root``, oldest first."""
    return [read_trajectory(RunPaths(d))["state"] for d in list_run_dirs(root)]


def workspace_diff(before: Path, after: Path) -> str:
    """Unified diff of two directory trees (``a/`` = before, ``b/`` = after); symlinks by target."""
    out: list[str] = []
    for rel in sorted(_files(before) | _files(after)):
        old, new = _content(before / rel), _content(after / rel)
        if old == new:
            continue
        texts = [_text_lines(data) for data in (old, new)]
        if any(t is None for t, data in zip(texts, (old, new)) if data is not None):
            out.append(f"Binary files a/{rel} and b/{rel} differ\n")
            continue
        lines = difflib.unified_diff(texts[0] or [], texts[1] or [], "/dev/null" if old is None else f"a/{rel}",
                                     "/dev/null" if new is None else f"b/{rel}")
        out.extend(line if line.endswith("\n") else line + "\n\\ No newline at end of file\n" for line in lines)
    return "".join(out)


def _files(root: Path) -> set[Path]:
    if not root.is_dir():
        return set()
    found = set()
    for dirpath, dirnames, filenames in os.walk(root):
        base = Path(dirpath)
        found |= {(base / n).relative_to(root) for n in filenames}
        found |= {(base / n).relative_to(root) for n in dirnames if (base / n).is_symlink()}
    return found


def _content(path: Path) -> bytes | None:
    if path.is_symlink():
        return f"symlink -> {os.readlink(path)}\n".encode()
    try:
        return path.read_bytes() if path.stat().st_size <= _DIFF_MAX_BYTES else b"\0large"
    except FileNotFoundError:
        return None


def _text_lines(data: bytes | None) -> list[str] | None:
    """The lines of a text file; None for binary (or missing) content."""
    if data is None or b"\0" in data:
        return None
    try:
        return data.decode("utf-8").splitlines(keepends=True)
    except UnicodeDecodeError:
        return None


def export_run(root: Path, run: str, out: Path) -> Path:
    """Write one run to the tar ``out``; return its path."""
    paths = find_run(root, run)
    with _open_tar(out) as tar:
        _add_run(tar, paths)
    return out


def export_all(root: Path, out: Path) -> list[Path]:
    """Every run: into one tar if ``out`` names a .tar/.tar.gz/.tgz, else one tar per run in directory ``out``."""
    runs = [RunPaths(d) for d in list_run_dirs(root)]
    if out.name.endswith((".tar", ".tar.gz", ".tgz")):
        with _open_tar(out) as tar:
            for paths in runs:
                _add_run(tar, paths)
        return [out]
    out.mkdir(parents=True, exist_ok=True)
    return [export_run(root, str(paths.dir), out / f"{paths.run_id}.tar.gz") for paths in runs]


def _open_tar(out: Path) -> tarfile.TarFile:
    out.parent.mkdir(parents=True, exist_ok=True)
    return tarfile.open(out, "w:gz" if out.name.endswith((".gz", ".tgz")) else "w")


def _add_run(tar: tarfile.TarFile, paths: RunPaths) -> None:
    state = read_trajectory(paths)["state"]
    for path in (paths.events, paths.traces, paths.trajectory):
        if path.exists():
            tar.add(path, f"{paths.run_id}/{path.name}")
    generated = {
        "summary.json": json.dumps(summarize(paths), indent=2) + "\n",
        "workspace.diff": workspace_diff(paths.snapshot, Path(state["task_dir"]) / "workspace"),
    }
    for name, text in generated.items():
        data = text.encode("utf-8")
        info = tarfile.TarInfo(f"{paths.run_id}/{name}")
        info.size, info.mtime, info.mode = len(data), int(time.time()), 0o644
        tar.addfile(info, io.BytesIO(data))
