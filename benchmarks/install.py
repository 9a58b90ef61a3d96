"""Benchmark `appliance install` against a raw offline `uv pip install` of the same wheelhouse.

    .venv/bin/python benchmarks/install.py [--bundle DIR --keyring K] [--repeat 3]

Without ``--bundle``, builds one first (on a connected host): the harness's own
runtime dependencies for this machine's Python and architecture, signed with a
throwaway key, the audit waived for the benchmark (recorded in its manifest).
Then, in the same run, on the same wheelhouse, each with a cold uv cache:

- baseline: the bundle's uv, ``uv venv`` + ``uv pip install --offline --no-index
  --no-build --require-hashes -r lockfiles/pylock.toml``;
- ``install_bundle`` (no images): verify (signatures, every hash, content
  checks), verified copies, the same venv, appliance's own wheel, receipt,
  atomic switch.

Prints the medians and the ratio install / baseline. Goal: <= 1.1x.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from conftest import make_keys  # noqa: E402  (real gpg keys, as the tests make them)

from appliance.bundle import build_bundle  # noqa: E402
from appliance.install import InstallOptions, host_target, install_bundle  # noqa: E402
from appliance.spec import parse_spec  # noqa: E402


def build(work: Path) -> tuple[Path, Path]:
    keys = make_keys(work / "gnupg", 1)
    keyring = keys.keyring(path=work / "keyring.gpg")
    py = f"{sys.version_info[0]}.{sys.version_info[1]}"
    text = (
        '[bundle]\nname = "bench"\nversion = "1.0.0"\n\n'
        f'[[targets]]\npython = "{py}"\nplatform = "manylinux_2_28_{platform.machine()}"\n\n'
        f'[signing]\nkeys = ["{keys.keys[0].fingerprint}"]\nhomedir = "{keys.homedir}"\n\n'
        '[audit]\nwaive = true\nwaive_reason = "benchmark bundle: install speed only"\n'
    )
    out = work / "bundle"
    build_bundle(parse_spec(text, base_dir=work), out, progress=False)
    return out, keyring


def baseline(bundle: Path, python: str, work: Path) -> float:
    import json

    tools = json.loads((bundle / "lockfiles" / "tools.json").read_text())
    key = host_target(tools, python)
    uv = work / "uv"
    if not uv.exists():
        with zipfile.ZipFile(bundle / tools["uv"][key]["wheel"]) as zf:
            uv.write_bytes(zf.read(next(n for n in zf.namelist() if n.endswith(".data/scripts/uv"))))
        uv.chmod(0o755)
    venv, cache = work / "venv", work / "uv-cache"
    shutil.rmtree(venv, ignore_errors=True)
    shutil.rmtree(cache, ignore_errors=True)
    env = {**os.environ, "UV_CACHE_DIR": str(cache), "UV_PYTHON_DOWNLOADS": "never", "UV_NO_CONFIG": "1",
           "UV_LINK_MODE": "copy"}
    t = time.perf_counter()
    subprocess.run([uv, "venv", "--quiet", "--python", python, venv], check=True, env=env)
    subprocess.run([uv, "pip", "install", "--quiet", "--python", venv / "bin" / "python", "--offline", "--no-index",
                    "--no-build", "--require-hashes", "-r", bundle / "lockfiles" / "pylock.toml"], check=True, env=env)
    return time.perf_counter() - t


def ours(bundle: Path, keyring: Path, python: str, work: Path) -> float:
    prefix = work / "prefix"
    shutil.rmtree(prefix, ignore_errors=True)
    t = time.perf_counter()
    install_bundle(bundle, keyring, InstallOptions(prefix=prefix, python=python, images=False, progress=False))
    return time.perf_counter() - t


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bundle", type=Path)
    ap.add_argument("--keyring", type=Path)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    python = getattr(sys, "_base_executable", sys.executable)
    with tempfile.TemporaryDirectory(prefix="appliance-bench-install-") as tmp:
        work = Path(tmp)
        bundle, keyring = (args.bundle, args.keyring) if args.bundle else build(work)
        n_wheels = len(list((bundle / "wheelhouse").glob("*.whl")))
        size = sum(p.stat().st_size for p in (bundle / "wheelhouse").glob("*.whl"))
        print(f"wheelhouse: {n_wheels} wheels, {size / 1e6:.1f} MB; python {python}", flush=True)
        with open(os.devnull, "w") as devnull:
            base, mine = [], []
            for i in range(args.repeat):  # interleaved, so drift hits both alike
                base.append(baseline(bundle, python, work))
                stdout, sys.stdout = sys.stdout, devnull
                try:
                    mine.append(ours(bundle, keyring, python, work))
                finally:
                    sys.stdout = stdout
                print(f"  run {i + 1}: uv pip install {base[-1]:.2f}s, appliance install {mine[-1]:.2f}s", flush=True)
    b, m = statistics.median(base), statistics.median(mine)
    print(f"baseline uv pip install --offline: {b:.2f}s (median of {args.repeat})")
    print(f"appliance install (verify + venv + receipts): {m:.2f}s (median of {args.repeat})")
    print(f"ratio install / baseline: {m / b:.2f}x (goal <= 1.10x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
