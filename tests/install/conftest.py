"""Install-stage fixtures: a real registry on loopback, images built here, bundles with images.

Upstream images cannot be pulled here: small images are built locally (FROM
scratch with busybox; a Python base made from this machine's Debian python3.11
and the libraries it links), pushed to Debian's ``docker-registry`` on
127.0.0.1, and vendored by the real pull-by-digest code.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tarfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from appliance.bundle import build_bundle
from appliance.spec import parse_spec

from bundle.conftest import built, clean_osv_url, find_links, spec_text  # noqa: F401  (shared session fixtures)

REPO = Path(__file__).resolve().parents[2]
CONTAINERS_CONF = REPO / "installer" / "containers.conf"
ROLES = ("vllm", "collector", "jaeger", "prometheus", "grafana")


def podman_env() -> dict[str, str]:
    env = dict(os.environ)
    if CONTAINERS_CONF.is_file():
        env.setdefault("CONTAINERS_CONF", str(CONTAINERS_CONF))
    return env


def sh(*argv: str, **kw) -> subprocess.CompletedProcess:
    proc = subprocess.run(argv, capture_output=True, text=True, env=podman_env(), check=False, **kw)
    assert proc.returncode == 0, f"{' '.join(argv)}: {proc.stderr[-2000:]}"
    return proc


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Debian's docker-registry on 127.0.0.1: returns host:port."""
    exe = shutil.which("docker-registry")
    if not exe:
        pytest.fail("docker-registry not installed (scripts/setup.sh installs it)")
    d = tmp_path_factory.mktemp("registry")
    port = _free_port()
    (d / "config.yml").write_text(
        f"version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {d / 'data'}\n"
        f"http:\n  addr: 127.0.0.1:{port}\nlog:\n  level: warn\n")
    log = open(d / "log", "w")
    proc = subprocess.Popen([exe, "serve", str(d / "config.yml")], stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/", timeout=2)
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    pytest.fail(f"registry did not start: {(d / 'log').read_text()[-2000:]}")
                time.sleep(0.2)
        yield f"127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(10)
        log.close()


def _busybox_image(ctx: Path, tag: str, cmd: str) -> None:
    ctx.mkdir(parents=True, exist_ok=True)
    shutil.copy(shutil.which("busybox") or "/bin/busybox", ctx / "busybox")
    (ctx / "Containerfile").write_text(
        "FROM scratch\nCOPY busybox /bin/busybox\nRUN [\"/bin/busybox\", \"--install\", \"-s\", \"/bin\"]\n"
        f"LABEL org.appliance.test=stub\nENTRYPOINT [\"/bin/sh\", \"-c\", \"{cmd}\"]\n")
    sh("podman", "build", "--network", "none", "-q", "-t", tag, str(ctx))


def _ldd(path: str) -> set[str]:
    out = subprocess.run(["ldd", path], capture_output=True, text=True, check=False).stdout
    libs = set()
    for line in out.splitlines():
        parts = line.split()
        for p in parts:
            if p.startswith("/"):
                libs.add(p)
    return libs


def python_rootfs(out: Path) -> Path:
    """A rootfs tarball: Debian's python3.11, its stdlib and every library they link, and busybox."""
    py = "/usr/bin/python3.11"
    stdlib = Path("/usr/lib/python3.11")
    libs = _ldd(py) | _ldd(str(shutil.which("uv") or REPO / ".venv/bin/uv"))
    for so in (stdlib / "lib-dynload").glob("*.so"):
        libs |= _ldd(str(so))
    with tarfile.open(out, "w") as tar:
        def add(src: str, arc: str | None = None) -> None:
            tar.add(os.path.realpath(src), arcname=(arc or src).lstrip("/"), recursive=False)

        for d in ("tmp", "etc", "bin", "usr/bin", "usr/lib", "lib64", "lib/x86_64-linux-gnu"):
            info = tarfile.TarInfo(d)
            info.type, info.mode = tarfile.DIRTYPE, 0o1777 if d == "tmp" else 0o755
            tar.addfile(info)
        add(py)
        link = tarfile.TarInfo("usr/bin/python3")
        link.type, link.linkname = tarfile.SYMTYPE, "python3.11"
        tar.addfile(link)
        tar.add(stdlib, arcname="usr/lib/python3.11",
                filter=lambda ti: None if "/test/" in f"/{ti.name}/" or ti.name.endswith("/test") else ti)
        for lib in sorted(libs):
            add(lib)
        add(shutil.which("busybox") or "/bin/busybox", "/bin/busybox")
        for name in ("sh", "ls", "cat", "rm", "mkdir"):
            ln = tarfile.TarInfo(f"bin/{name}")
            ln.type, ln.linkname = tarfile.SYMTYPE, "busybox"
            tar.addfile(ln)
        data = b"root:x:0:0:root:/root:/bin/sh\n"
        info = tarfile.TarInfo("etc/passwd")
        info.size = len(data)
        import io

        tar.addfile(info, io.BytesIO(data))
    return out


@pytest.fixture(scope="session")
def pushed(registry: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Role -> registry reference (with tag) of an image built here and pushed to the loopback registry."""
    d = tmp_path_factory.mktemp("images")
    refs = {}
    for n, role in enumerate(ROLES):
        local = f"localhost/appliance-test/{role}:stub"
        _busybox_image(d / role, local, f"echo {role} up; exec httpd -f -p {18000 + n}")
        refs[role] = f"{registry}/stub/{role}:1"
        sh("podman", "push", "-q", "--tls-verify=false", local, refs[role])
    base = "localhost/appliance-test/python-base:3.11"
    sh("podman", "import", "-q", str(python_rootfs(d / "python-rootfs.tar")), base)
    refs["harness-base"] = f"{registry}/stub/python-base:3.11"
    sh("podman", "push", "-q", "--tls-verify=false", base, refs["harness-base"])
    return refs


def images_toml(refs: dict[str, str], pins: dict[str, str] | None = None) -> str:
    out = ""
    for role, ref in refs.items():
        name = role if role != "harness-base" else "python-base"
        pin = f'digest = "{pins[role]}"\n' if pins and role in pins else ""
        out += f'[[images]]\nname = "{name}"\nrole = "{role}"\nref = "{ref}"\ntls_verify = false\n{pin}\n'
    return out


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("model") / "tiny"
    d.mkdir()
    (d / "config.json").write_text('{"model_type": "llama"}\n')
    (d / "model.safetensors").write_bytes(os.urandom(256 * 1024))
    return d


@pytest.fixture(scope="session")
def image_bundle(tmp_path_factory, find_links, gpg_keys, clean_osv_url, pushed, model_dir) -> Path:  # noqa: F811
    """A bundle (cp311 x86_64) with every stack image, a Python base for the harness image, and a model."""
    base = tmp_path_factory.mktemp("image-bundle")
    text = spec_text(find_links, gpg_keys, targets=[("3.11", "x86_64")],
                     extra=f'[audit]\nosv_url = "{clean_osv_url}"\n\n'
                           f'[[models]]\nname = "tiny"\npath = "{model_dir}"\n\n' + images_toml(pushed))
    out = base / "bundle"
    build_bundle(parse_spec(text, base_dir=base), out, progress=False)
    return out


@pytest.fixture
def keyring(gpg_keys, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return gpg_keys.keyring(0, 1, path=tmp_path_factory.mktemp("kr") / "keyring.gpg")
