"""Fixtures for the bundle build tests: a local find-links index, specs, an OSV server.

The find-links directory holds wheels made by tests/wheelfactory.py and the real
uv wheels (x86_64 and aarch64) that ``scripts/fetch-test-wheels.sh`` downloads
beforehand, with network; the tests themselves need none.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from appliance.bundle import build_bundle
from appliance.spec import Spec, parse_spec
from appliance._internal.manifest import Manifest
from appliance._internal.osv import OsvDatabase, OsvServer

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from wheelfactory import make_wheel  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
TEST_WHEELS = REPO / ".cache" / "test-wheels"
X86_64, AARCH64 = "x86_64", "aarch64"
TARGETS = [("3.11", X86_64), ("3.12", X86_64), ("3.11", AARCH64), ("3.12", AARCH64)]


def cp(python: str) -> str:
    return "cp" + python.replace(".", "")


def uv_wheels() -> list[Path]:
    found = {arch: sorted(TEST_WHEELS.glob(f"uv-*{arch}*.whl")) for arch in (X86_64, AARCH64)}
    missing = [arch for arch, paths in found.items() if not paths]
    if missing:
        pytest.fail(
            f"no uv wheel for {', '.join(missing)} in {TEST_WHEELS}: run scripts/fetch-test-wheels.sh "
            "(with network) before the test suite", pytrace=False,
        )
    return [paths[-1] for paths in found.values()]


@pytest.fixture(scope="session")
def find_links(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """alpha -> beta -> gamma (pure), fastlib (compiled, both arches), x86only, newglibc (2_34 only)."""
    d = tmp_path_factory.mktemp("find-links")
    make_wheel(d, "alpha", "1.0", requires=["beta>=1"])
    make_wheel(d, "beta", "1.2", requires=["gamma"])
    make_wheel(d, "gamma", "0.3")
    for python, arch in TARGETS:
        make_wheel(d, "fastlib", "2.0", tag=f"{cp(python)}-{cp(python)}-manylinux_2_17_{arch}")
        if arch == X86_64:
            make_wheel(d, "x86only", "1.0", tag=f"{cp(python)}-{cp(python)}-manylinux_2_17_{arch}")
    make_wheel(d, "newglibc", "1.0", tag="py3-none-manylinux_2_34_x86_64")
    for wheel in uv_wheels():
        shutil.copy(wheel, d / wheel.name)
    return d


REQUIREMENTS = ("alpha", "fastlib", "x86only; platform_machine == 'x86_64'")


def spec_text(
    find_links: Path,
    gpg_keys,
    *,
    requirements: tuple[str, ...] = REQUIREMENTS,
    targets: list[tuple[str, str]] = TARGETS,
    extra: str = "",
    signing: bool = True,
) -> str:
    """An appliance.toml on the local find-links dir, signed by test key 0 unless ``signing`` is false."""
    return (
        '[bundle]\nname = "test"\nversion = "1.0.0"\n\n'
        f"[python]\nrequirements = {json.dumps(list(requirements))}\nno_index = true\n"
        f"find_links = [{json.dumps(str(find_links))}]\n\n"
        + "".join(f'[[targets]]\npython = "{p}"\nplatform = "manylinux_2_28_{a}"\n\n' for p, a in targets)
        + (f'[signing]\nkeys = ["{gpg_keys.keys[0].fingerprint}"]\nhomedir = "{gpg_keys.homedir}"\n\n' if signing else "")
        + extra
    )


@pytest.fixture
def make_spec(tmp_path: Path, find_links: Path, gpg_keys) -> Callable[..., Spec]:
    """``make_spec(**spec_text options)``: the spec, also written to tmp_path/appliance.toml."""

    def make(**options) -> Spec:
        text = spec_text(find_links, gpg_keys, **options)
        (tmp_path / "appliance.toml").write_text(text)
        return parse_spec(text, base_dir=tmp_path)

    return make


@pytest.fixture
def osv_dump(tmp_path: Path) -> Callable[[list[dict]], Path]:
    """Write OSV records (osv.dev format, one JSON per vulnerability) into a dump directory."""

    def write(records: list[dict]) -> Path:
        d = tmp_path / "osv-dump"
        d.mkdir(exist_ok=True)
        for record in records:
            (d / f"{record['id']}.json").write_text(json.dumps(record))
        return d

    return write


def alpha_vuln(vid: str = "PYSEC-TEST-1") -> dict:
    return {
        "schema_version": "1.6.0",
        "id": vid,
        "modified": "2026-01-01T00:00:00Z",
        "published": "2026-01-01T00:00:00Z",
        "summary": "alpha does something bad",
        "affected": [{
            "package": {"ecosystem": "PyPI", "name": "alpha", "purl": "pkg:pypi/alpha"},
            "ranges": [{"type": "ECOSYSTEM", "events": [{"introduced": "0"}, {"fixed": "1.1"}]}],
            "versions": ["0.9", "1.0"],
        }],
    }


@contextlib.contextmanager
def serving(db: OsvDatabase) -> Iterator[str]:
    """Run the real OSV server on a free loopback port; yields its query URL."""
    server = OsvServer(db)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield server.url
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def osv_server() -> Iterator[Callable[[Path], str]]:
    """``osv_server(dump)`` serves a dump for the rest of the test and returns the query URL."""
    with contextlib.ExitStack() as stack:
        yield lambda dump: stack.enter_context(serving(OsvDatabase.load(dump)))


@pytest.fixture(scope="session")
def clean_osv_url() -> Iterator[str]:
    with serving(OsvDatabase([])) as url:
        yield url


@pytest.fixture(scope="session")
def built(tmp_path_factory: pytest.TempPathFactory, find_links: Path, gpg_keys, clean_osv_url: str) -> tuple[Path, Manifest]:
    """One bundle for all four targets, built once, audited clean against an empty OSV dump."""
    base = tmp_path_factory.mktemp("built")
    text = spec_text(find_links, gpg_keys, extra=f'[audit]\nosv_url = "{clean_osv_url}"\n')
    out = base / "bundle"
    manifest = build_bundle(parse_spec(text, base_dir=base), out, progress=False)
    return out, manifest
