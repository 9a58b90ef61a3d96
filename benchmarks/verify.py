"""Benchmark `appliance verify` on a multi-GB bundle against hashlib and sha256sum.

    .venv/bin/python benchmarks/verify.py [--size-gb 3] [--files 12] [--dir /tmp]

Makes a bundle of ``--files`` large files plus many small ones (random bytes),
seals it with a throwaway key, warms the page cache, then measures in the same
run and on the same bytes:

- Python hashlib sha256 on one core (the per-core ceiling),
- coreutils ``sha256sum`` over the same files,
- ``verify_bundle`` (all cores, plus signatures and every other check).

Prints throughput and the ratios verify / (hashlib x cores) and verify / sha256sum.
Goal: all cores busy, verify >= 90% of cores x hashlib.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from conftest import make_keys  # noqa: E402  (real gpg keys, as the tests make them)

from appliance.verify import verify_bundle  # noqa: E402
from appliance._internal.hashing import default_workers, hash_file  # noqa: E402
from appliance._internal.seal import seal  # noqa: E402


def make_bundle(root: Path, size_gb: float, files: int) -> list[Path]:
    big = int(size_gb * (1 << 30) / files)
    block = os.urandom(1 << 20)
    paths = []
    (root / "models" / "m").mkdir(parents=True)
    for i in range(files):
        p = root / "models" / "m" / f"shard-{i:03d}.bin"
        with open(p, "wb") as f:
            for _ in range(big >> 20):
                f.write(block[i:] + block[:i])  # distinct content per file
        paths.append(p)
    (root / "wheelhouse").mkdir()
    for i in range(200):
        p = root / "wheelhouse" / f"small-{i}.whl"
        p.write_bytes(os.urandom(50_000))
        paths.append(p)
    return paths


def best_of(n: int, fn) -> float:
    times = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size-gb", type=float, default=3.0)
    ap.add_argument("--files", type=int, default=12)
    ap.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()))
    ap.add_argument("--repeat", type=int, default=2)
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="appliance-bench-", dir=args.dir))
    try:
        bundle = work / "bundle"
        print(f"making a {args.size_gb} GB bundle in {bundle} ...", flush=True)
        paths = make_bundle(bundle, args.size_gb, args.files)
        total = sum(p.stat().st_size for p in paths)
        keys = make_keys(work / "gnupg", 1)
        now = dt.datetime.now(dt.timezone.utc)
        meta = dict(name="bench", version="1", created=now, expires=now + dt.timedelta(days=1), targets=[],
                    audit=dict(report=None, status="waived", waiver_reason="benchmark"))
        seal(bundle, meta, keys=[keys.keys[0].fingerprint], homedir=keys.homedir)
        keyring = keys.keyring(path=work / "keyring.gpg")

        for p in paths:  # warm the page cache
            hash_file(p)
        cores = default_workers()
        gb = total / 1e9

        t_hashlib = best_of(args.repeat, lambda: [hash_file(p) for p in paths])
        sha256sum = shutil.which("sha256sum")
        t_coreutils = best_of(args.repeat, lambda: subprocess.run(
            [sha256sum, *map(str, paths)], check=True, stdout=subprocess.DEVNULL)) if sha256sum else float("nan")
        reports = []
        t_verify = best_of(args.repeat, lambda: reports.append(
            verify_bundle(bundle, keyring, installed_version=None, progress=False)))
        report = reports[-1]
        if report.stats.files < len(paths):
            print(f"verify hashed only {report.stats.files} of {len(paths)} files", file=sys.stderr)
            return 1

        r_hashlib, r_coreutils, r_verify = gb / t_hashlib, gb / t_coreutils, gb / t_verify
        print(f"bundle: {len(paths)} files, {gb:.2f} GB, {cores} cores")
        print(f"hashlib sha256, 1 core : {r_hashlib:6.2f} GB/s")
        print(f"coreutils sha256sum    : {r_coreutils:6.2f} GB/s")
        print(f"appliance verify       : {r_verify:6.2f} GB/s  (end to end: signatures, index, every check)")
        print(f"ratio verify / (hashlib x {cores} cores) = {r_verify / (r_hashlib * cores):.2f}  (goal >= 0.90)")
        print(f"ratio verify / sha256sum              = {r_verify / r_coreutils:.2f}")
        return 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
