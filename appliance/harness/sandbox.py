"""Run a command with no network, confined to one writable directory.

Workflow: :func:`detect` probes once per process, in order,

1. ``bwrap`` (bubblewrap): new network and PID namespaces, system directories
   bound read-only, the workspace bound read-write, a private /tmp;
2. ``unshare --net`` (as root) or ``unshare --net --map-root-user``: no
   network, but no filesystem confinement;

and :meth:`Sandbox.run` runs a shell command under the first that works, with
a timeout (the whole process group is killed) and an output cap (head and
tail kept). If neither works, :func:`detect` raises :class:`SandboxUnavailable`:
commands are never run unsandboxed.
"""

from __future__ import annotations

import functools
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from appliance.errors import HarnessError

_SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/etc", "/opt")
_ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin", "LANG": "C.UTF-8", "TERM": "dumb"}


class SandboxUnavailable(HarnessError):
    """Neither bwrap nor unshare can create a network-less sandbox here."""


@dataclass
class Completed:
    exit_code: int | None  # None when killed by the timeout or a cancel
    output: str  # stdout and stderr interleaved, capped
    timed_out: bool = False


@dataclass(frozen=True)
class Sandbox:
    kind: str  # "bwrap" or "unshare"
    prefix: tuple[str, ...]

    def argv(self, command: str, workdir: Path, read_only: tuple[Path, ...] = ()) -> list[str]:
        if self.kind != "bwrap":
            return [*self.prefix, "sh", "-c", f'cd "$1" && {command}', "sh", str(workdir)]
        binds: list[str] = []
        for d in _SYSTEM_DIRS:
            if os.path.islink(d):
                binds += ["--symlink", os.readlink(d), d]
            elif os.path.isdir(d):
                binds += ["--ro-bind", d, d]
        for path in read_only:
            binds += ["--ro-bind", str(path), str(path)]
        binds += ["--bind", str(workdir), str(workdir), "--chdir", str(workdir), "--setenv", "HOME", str(workdir)]
        return [*self.prefix, *binds, "--", "sh", "-c", command]

    def run(
        self,
        command: str,
        workdir: Path,
        *,
        timeout: float,
        output_cap: int,
        read_only: tuple[Path, ...] = (),
        cancel: threading.Event | None = None,
    ) -> Completed:
        """Run ``command`` with ``sh -c`` in ``workdir``; never raises on the command's failure."""
        proc = subprocess.Popen(
            self.argv(command, workdir, read_only),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=_ENV | {"HOME": str(workdir)},
            start_new_session=True,
        )
        assert proc.stdout is not None
        reader = _CappedReader(proc.stdout, output_cap)
        deadline = time.monotonic() + timeout
        timed_out = False
        while proc.poll() is None:
            if time.monotonic() > deadline or (cancel and cancel.is_set()):
                timed_out = time.monotonic() > deadline
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                break
            reader.done.wait(0.02)
        reader.done.wait(1.0)
        killed = proc.returncode is not None and proc.returncode < 0
        return Completed(None if killed else proc.returncode, reader.text(), timed_out)


class _CappedReader:
    """Drain a pipe in a thread, keeping the first and last ``cap // 2`` bytes."""

    def __init__(self, pipe, cap: int):
        self.cap, self.head, self.tail, self.total = cap, b"", b"", 0
        self.done = threading.Event()
        threading.Thread(target=self._drain, args=(pipe,), daemon=True).start()

    def _drain(self, pipe) -> None:
        half = self.cap // 2
        with pipe:
            while chunk := pipe.read1(65536):
                self.total += len(chunk)
                if len(self.head) < half:
                    take = half - len(self.head)
                    self.head, chunk = self.head + chunk[:take], chunk[take:]
                self.tail = (self.tail + chunk)[-half:]
        self.done.set()

    def text(self) -> str:
        omitted = self.total - len(self.head) - len(self.tail)
        middle = f"\n[... {omitted} bytes omitted ...]\n".encode() if omitted > 0 else b""
        return (self.head + middle + self.tail).decode("utf-8", "replace")


@functools.cache
def detect() -> Sandbox:
    """The first sandbox that can actually run ``true`` without a network here."""
    candidates = []
    if bwrap := shutil.which("bwrap"):
        candidates.append(Sandbox("bwrap", (bwrap, "--unshare-net", "--unshare-pid", "--die-with-parent",
                                            "--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp")))
    if unshare := shutil.which("unshare"):
        candidates.append(Sandbox("unshare", (unshare, "--net")))
        candidates.append(Sandbox("unshare", (unshare, "--net", "--map-root-user")))
    tried = []
    for sandbox in candidates:
        with tempfile.TemporaryDirectory() as scratch:
            probe = sandbox.run("true", Path(scratch), timeout=10, output_cap=4096)
        if probe.exit_code == 0:
            return sandbox
        tried.append(f"{' '.join(sandbox.prefix[:3])}: {probe.output.strip()[:200] or probe.exit_code}")
    raise SandboxUnavailable("no network-less sandbox available (" + "; ".join(tried or ["bwrap/unshare not found"]) + ")")
