"""Resolve the spec's requirements for every target with ``uv lock``.

The resolution project (``lockfiles/pyproject.toml``) holds the requirements,
``requires-python`` spanning the targets, and ``[tool.uv] environments`` and
``required-environments`` limited to the targets' markers, so uv resolves for
exactly those boxes and fails when a package has no wheel for one of them.
Index options come from the spec (``index_url``, ``find_links``, ``no_index``)
as uv flags; anything else uv reads from its own ``UV_*`` environment.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from appliance.errors import BundleError
from appliance.spec import Spec
from appliance._internal.targets import uv_marker

PROJECT = "appliance-bundle"


def requirements(spec: Spec) -> list[str]:
    """The spec's requirements, plus ``uv`` when it lacks it (the box needs no uv of its own)."""
    reqs = list(spec.python.requirements)
    if not any(canonicalize_name(Requirement(r).name) == "uv" for r in reqs):
        reqs.append("uv")
    return reqs


def _toml_list(items: list[str]) -> str:
    return "[\n" + "".join(f"    {json.dumps(i)},\n" for i in items) + "]"


def project_toml(spec: Spec, reqs: list[str]) -> str:
    pythons = sorted({tuple(int(p) for p in t.python.split(".")) for t in spec.targets})
    low, high = pythons[0], pythons[-1]
    markers = [uv_marker(t) for t in spec.targets]
    return (
        "# Resolution project written by `appliance bundle build`: not a package.\n"
        f"[project]\nname = {json.dumps(PROJECT)}\nversion = \"0\"\n"
        f"requires-python = \">={low[0]}.{low[1]}, <{high[0]}.{high[1] + 1}\"\n"
        f"dependencies = {_toml_list(reqs)}\n\n"
        f"[tool.uv]\npackage = false\nenvironments = {_toml_list(markers)}\n"
        f"required-environments = {_toml_list(markers)}\n"
    )


def _uv() -> str:
    """The uv that ships with appliance (a declared dependency), else one on PATH."""
    try:
        from uv import find_uv_bin

        return find_uv_bin()
    except (ImportError, FileNotFoundError):
        pass
    path = shutil.which("uv")
    if not path:
        raise BundleError("uv not found (it is a dependency of appliance: reinstall it)")
    return path


def index_flags(spec: Spec) -> list[str]:
    flags = []
    if spec.python.no_index:
        flags.append("--no-index")
    if spec.python.index_url:
        flags += ["--default-index", spec.python.index_url]
    for link in spec.python.find_links:
        is_url = "://" in link
        flags += ["--find-links", link if is_url else str(spec.resolve(Path(link)))]
    return flags


def _run(args: list[str], cwd: Path, what: str) -> str:
    proc = subprocess.run(args, cwd=cwd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        detail = proc.stderr.strip() or proc.stdout.strip()
        raise BundleError(f"{what} failed (exit {proc.returncode}):\n{detail}")
    return proc.stdout


def lock(spec: Spec, lockdir: Path) -> str:
    """Write pyproject.toml, run ``uv lock`` in ``lockdir``; return uv's pylock export (with URLs)."""
    lockdir.mkdir(parents=True, exist_ok=True)
    (lockdir / "pyproject.toml").write_text(project_toml(spec, requirements(spec)), encoding="utf-8")
    uv, flags = _uv(), index_flags(spec)
    started = time.monotonic()
    print("resolving: uv lock for " + ", ".join(t.key for t in spec.targets), flush=True)
    _run([uv, "lock", "--no-progress", *flags], lockdir, "uv lock")
    print(f"resolved in {time.monotonic() - started:.1f}s", flush=True)
    return _run(
        [uv, "export", "--frozen", "--no-header", "--format", "pylock.toml", *flags],
        lockdir, "uv export",
    )
