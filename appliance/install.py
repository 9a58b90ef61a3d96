"""Install a verified bundle on the box, with no network at any step; roll back.

    receipt = install_bundle(Path("/media/usb/bundle"), Path("/etc/appliance/keyring.gpg"))

Workflow, in its safety order (layout: :mod:`appliance._internal.paths`):

1. Verify (:func:`appliance.verify.verify_or_raise`): signatures, every hash,
   lock == wheelhouse == SBOM, image blobs, policy; the rollback floor is the
   current install. Nothing of the bundle is used before this passes.
2. Stage into ``releases/<id>`` (``<id>`` = version + manifest digest), in place
   (venv scripts and the stack YAML name their final paths); the release is
   complete only once its ``receipt.json`` is written, last, after a sync.
   Every file taken from the bundle after verify is copied and hashed in one
   pass against the digests verify just computed, so a file swapped on the
   medium after the check is refused (lockfiles, SBOMs, uv, appliance's wheel,
   models, the harness image's build context). Wheels are read by uv itself
   with ``--require-hashes`` against the copied lock.
3. The harness venv: the bundle's own uv for this host
   (``--offline --no-index --no-build --require-hashes``), pip only if that uv
   cannot run here.
4. Images (when the bundle has them and podman is asked for): each copied into
   podman's storage and its digest compared with the lock; the harness image
   built with ``podman build --network none``; the stack written as Kubernetes
   YAML (started only on request).
5. ``current`` is switched to the complete release with one atomic ``rename``
   of a symlink; the old one becomes ``previous``.

A failure or kill -9 at any step leaves ``current`` untouched; a release
directory without a receipt (an interrupted install) is removed by the next. Installing the same bundle again
is a no-op. Every attempt leaves a receipt in ``receipts/``.
"""

from __future__ import annotations

import datetime as dt
import errno
import fcntl
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from appliance.errors import ApplianceError, InstallError
from appliance.verify import VerifyReport, verify_or_raise
from appliance._internal import images as _images
from appliance._internal.hashing import CHUNK, Digest
from appliance._internal.manifest import MANIFEST, Manifest, utcnow
from appliance._internal.paths import install_root
from appliance._internal.progress import Progress

__all__ = ["InstallOptions", "install_bundle", "rollback", "stack_down", "stack_up", "status"]

RECEIPT = "receipt.json"
CONTAINERS_CONF = Path(__file__).parent / "_internal" / "stack_assets" / "containers.conf"


@dataclass
class InstallOptions:
    prefix: Path | None = None
    threshold: int | None = None
    allow_expired: bool = False
    images: bool = True  # load images, build the harness image, write the stack
    start: bool = False  # podman kube play the stack after the switch
    python: str | None = None  # interpreter for the harness venv (default: this one)
    installer: Literal["auto", "uv", "pip"] = "auto"  # auto: the bundle's uv, pip only if it cannot run here
    publish_host: str = "127.0.0.1"  # where the stack's ports are published
    stack_ports: dict[str, int] | None = None  # host ports, by name (appliance._internal.stack.DEFAULT_PORTS)
    progress: bool = True
    # Test hook: called with a step name before each step (fault injection at a step boundary).
    on_step: Callable[[str], None] | None = field(default=None, repr=False)


def _say(msg: str) -> None:
    print(f"install: {msg}", flush=True)


@contextmanager
def _locked(root: Path) -> Iterator[None]:
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".lock", "w") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise InstallError(f"another install is running in {root}") from None
        yield


def release_id(manifest: Manifest, manifest_sha256: str) -> str:
    return f"{manifest.version}-{manifest_sha256[:12]}"


def install_bundle(bundle: Path, keyring: Path, options: InstallOptions | None = None) -> dict[str, Any]:
    """Verify, stage, switch; returns the receipt. Raises VerifyError or InstallError, leaving ``current`` intact."""
    opts = options or InstallOptions()
    root = install_root(opts.prefix)
    bundle = bundle.resolve()
    receipt: dict[str, Any] = {"bundle": str(bundle), "started": utcnow().isoformat(), "result": "failed"}
    with _locked(root):
        try:
            _step(opts, "verify")
            _say(f"verifying {bundle}")
            report = verify_or_raise(bundle, keyring, threshold=opts.threshold or 1, allow_expired=opts.allow_expired,
                                     prefix=root, progress=opts.progress)
            manifest = Manifest.model_validate_json((bundle / MANIFEST).read_bytes())
            msha = report.manifest_sha256
            rid = release_id(manifest, msha)
            receipt.update(name=manifest.name, version=manifest.version, manifest_sha256=msha, release=rid)
            final = root / "releases" / rid
            if (final / RECEIPT).is_file():
                _say(f"{rid} is already installed")
                receipt.update(result="unchanged")
            else:
                _stage(bundle, report, manifest, root, rid, receipt, opts)
            _switch(root, rid)
            if opts.start and (final / "stack" / "stack.yaml").is_file():
                _step(opts, "start")
                from appliance._internal.stack import start_stack

                start_stack(final / "stack" / "stack.yaml")
                receipt["started_stack"] = True
            if receipt["result"] != "unchanged":
                receipt["result"] = "installed"
            return receipt
        except ApplianceError as exc:
            receipt["error"] = str(exc)
            raise
        except OSError as exc:
            receipt["error"] = _os_error(exc)
            raise InstallError(receipt["error"] + " (the previous install is intact)") from exc
        finally:
            receipt["finished"] = utcnow().isoformat()
            _write_attempt(root, receipt)


def _step(opts: InstallOptions, name: str) -> None:
    if opts.on_step:
        opts.on_step(name)


def _os_error(exc: OSError) -> str:
    if exc.errno == errno.ENOSPC:
        return f"disk full while staging: {exc.filename or ''} {exc.strerror}".replace("  ", " ")
    return f"{exc.strerror or exc}: {exc.filename or ''}"


def _write_attempt(root: Path, receipt: dict[str, Any]) -> None:
    try:
        d = root / "receipts"
        d.mkdir(parents=True, exist_ok=True)
        stamp = receipt["finished"].replace(":", "").replace("-", "")
        _atomic_write(d / f"{stamp}-{receipt.get('release', 'unverified')}-{receipt['result']}.json",
                      json.dumps(receipt, indent=2) + "\n")
    except OSError as exc:  # a full disk must not hide the real error
        print(f"install: warning: receipt not written: {exc}", file=sys.stderr)


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


# --- staging ---------------------------------------------------------------------------------------------


def _stage(bundle: Path, report: VerifyReport, manifest: Manifest, root: Path, rid: str,
           receipt: dict[str, Any], opts: InstallOptions) -> None:
    releases = root / "releases"
    releases.mkdir(parents=True, exist_ok=True)
    for stale in releases.iterdir():
        if not (stale / RECEIPT).is_file():
            _say(f"removing releases/{stale.name} (left incomplete by an interrupted install)")
            shutil.rmtree(stale, ignore_errors=True)
    release = releases / rid
    release.mkdir()
    digests = {rel: Digest(size, sha) for rel, (size, sha) in report.digests.items()}
    try:
        copy = _Copier(bundle, release / "bundle", digests)
        _step(opts, "metadata")
        for rel in sorted(digests):
            if rel.split("/", 1)[0] in ("lockfiles", "sbom", "audit", "tools") or rel in (MANIFEST, "SHA256SUMS"):
                copy(rel)
        _step(opts, "venv")
        receipt["venv"] = _make_venv(bundle, release, copy, opts)
        _step(opts, "models")
        for model in manifest.models:
            rels = sorted(r for r in digests if r.startswith(model.path.rstrip("/") + "/"))
            bar = Progress(f"model {model.name}", sum(digests[r].size for r in rels), enabled=opts.progress)
            for rel in rels:
                copy(rel, advance=bar.advance)
            bar.close()
            _say(f"model {model.name}: {len(rels)} file(s) copied and checked")
        if manifest.images and opts.images:
            receipt["images"] = _install_images(bundle, release, copy, manifest, opts)
        (release / "uv").unlink(missing_ok=True)  # the venv has its own copy (uv is in every bundle's lock)
        _step(opts, "receipt")
        done = dict(receipt, result="installed", finished=utcnow().isoformat())
        os.sync()  # one flush of everything staged (thousands of venv files) before the receipt completes it
        _atomic_write(release / RECEIPT, json.dumps(done, indent=2) + "\n")
        _fsync_dir(release)
    except BaseException:
        shutil.rmtree(release, ignore_errors=True)
        raise


class _Copier:
    """Copy bundle files into the staging area, hashing in the same pass against verify's digests."""

    def __init__(self, src: Path, dest: Path, digests: dict[str, Digest]):
        self.src, self.dest, self.digests = src, dest, digests

    def __call__(self, rel: str, out: Path | None = None, advance: Callable[[int], None] | None = None) -> Path:
        import hashlib

        want = self.digests.get(rel)
        if want is None:
            raise InstallError(f"{rel}: not a verified file of the bundle")
        out = out or self.dest / rel
        out.parent.mkdir(parents=True, exist_ok=True)
        h = hashlib.sha256()
        size = 0
        fd = os.open(self.src / rel, os.O_RDONLY | os.O_NOFOLLOW)
        wfd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
        with os.fdopen(fd, "rb") as fin, os.fdopen(wfd, "wb") as fout:
            while chunk := fin.read(CHUNK):
                h.update(chunk)
                fout.write(chunk)
                size += len(chunk)
                if advance:
                    advance(len(chunk))
        if (size, h.hexdigest()) != (want.size, want.sha256):
            raise InstallError(f"{rel}: changed after verification (sha256 {h.hexdigest()}): refused")
        return out


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def host_target(tools: dict[str, Any], python: str) -> str:
    """The tools.json target key for this machine and the venv's interpreter, e.g. cp311-manylinux_2_28_x86_64."""
    out = subprocess.run([python, "-c", "import sys; print(f'cp{sys.version_info[0]}{sys.version_info[1]}')"],
                         capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise InstallError(f"cannot run the venv's interpreter {python}: {out.stderr.strip()}")
    tag, arch = out.stdout.strip(), platform.machine()
    keys = [k for k in tools["uv"] if k.startswith(tag + "-") and k.endswith("_" + arch)]
    if not keys:
        raise InstallError(f"the bundle has no target for {tag} on {arch} (it has {sorted(tools['uv'])})")
    return keys[0]


def _extract_uv(wheel_rel: str, dest: Path, copy: _Copier) -> Path:
    wheel = copy(wheel_rel, dest.with_name("uv.whl"))
    with zipfile.ZipFile(wheel) as zf:
        name = next((n for n in zf.namelist() if n.endswith(".data/scripts/uv")), None)
        if name is None:
            raise InstallError(f"{wheel_rel}: no uv binary in the wheel")
        dest.write_bytes(zf.read(name))
    dest.chmod(0o755)
    wheel.unlink()  # the venv step reads wheels from the bundle with --require-hashes
    return dest


def _self_requirement(copy: _Copier, tools: dict[str, Any]) -> Path | None:
    entry = tools.get("appliance")
    if not entry:
        return None
    wheel = copy.dest / entry["wheel"]
    req = wheel.parent / "self.txt"
    req.write_text(f"appliance @ {wheel.as_uri()} --hash=sha256:{entry['sha256']}\n", encoding="utf-8")
    return req


def _uv_env(cache: Path) -> dict[str, str]:
    return {**os.environ, "UV_CACHE_DIR": str(cache), "UV_PYTHON_DOWNLOADS": "never", "UV_NO_CONFIG": "1",
            "UV_LINK_MODE": "copy"}


def _make_venv(bundle: Path, release: Path, copy: _Copier, opts: InstallOptions) -> dict[str, str]:
    tools = json.loads((copy.dest / "lockfiles" / "tools.json").read_text(encoding="utf-8"))
    python = opts.python or getattr(sys, "_base_executable", None) or sys.executable
    key = host_target(tools, python)
    uv = _extract_uv(tools["uv"][key]["wheel"], release / "uv", copy)
    # The copied pylock points at ../wheelhouse/: link the bundle's wheelhouse beside it (read with --require-hashes).
    (copy.dest / "wheelhouse").symlink_to(bundle / "wheelhouse", target_is_directory=True)
    venv = release / "venv"
    pylock = copy.dest / "lockfiles" / "pylock.toml"
    self_req = _self_requirement(copy, tools)
    with tempfile.TemporaryDirectory(prefix="appliance-uv-cache-") as cache:
        env = _uv_env(Path(cache))
        probe = subprocess.run([str(uv), "--version"], capture_output=True, text=True, env=env, check=False)
        use_uv = probe.returncode == 0 and opts.installer != "pip"
        if opts.installer == "uv" and not use_uv:
            raise InstallError(f"the bundle's uv cannot run here: {probe.stderr.strip()[:500]}")
        if use_uv:
            _say(f"venv with the bundle's {probe.stdout.strip()} ({key})")
            flags = ["--offline", "--no-index", "--no-build", "--require-hashes"]
            _run([str(uv), "venv", "--quiet", "--python", python, str(venv)], "creating the venv", env)
            _run([str(uv), "pip", "install", "--python", str(venv / "bin" / "python"), *flags, "-r", str(pylock)],
                 "installing the wheelhouse", env)
            if self_req:
                _run([str(uv), "pip", "install", "--python", str(venv / "bin" / "python"), *flags, "--no-deps",
                      "-r", str(self_req)], "installing appliance", env)
            tool = probe.stdout.strip()
        else:
            why = "--installer pip" if opts.installer == "pip" else f"the bundle's uv cannot run here ({probe.stderr.strip()[:200]})"
            _say(f"{why}: venv with pip")
            env = _pip_env()
            _run([python, "-m", "venv", str(venv)], "creating the venv", env)
            reqs = copy.dest / "lockfiles" / "pip-requirements.txt"
            reqs.write_text(pip_requirements(pylock), encoding="utf-8")
            pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", "--no-index", "--only-binary",
                   ":all:", "--require-hashes", "--no-deps", "--find-links", str(bundle / "wheelhouse")]
            _run([*pip, "-r", str(reqs)], "installing the wheelhouse with pip", env)
            if self_req:
                _run([*pip, "-r", str(self_req)], "installing appliance with pip", env)
            tool = "pip " + _run([str(venv / "bin" / "python"), "-m", "pip", "--version"], "pip", env).stdout.split()[1]
    (copy.dest / "wheelhouse").unlink()
    return {"path": str(venv), "tool": tool, "target": key}


def pip_requirements(pylock: Path) -> str:
    """The pylock as a pip requirements file: pins, markers (pip evaluates them for the venv) and every hash."""
    import tomllib

    lines = []
    for pkg in tomllib.loads(pylock.read_text(encoding="utf-8"))["packages"]:
        marker = f" ; {pkg['marker']}" if pkg.get("marker") else ""
        hashes = "".join(f" \\\n    --hash=sha256:{w['hashes']['sha256']}" for w in pkg["wheels"])
        lines.append(f"{pkg['name']}=={pkg['version']}{marker}{hashes}\n")
    return "".join(lines)


def _pip_env() -> dict[str, str]:
    """pip with no configuration but ours: no config files, no PIP_* variables, no version check."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    return env | {"PIP_CONFIG_FILE": os.devnull, "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_NO_INPUT": "1"}


def _run(argv: list[str], what: str, env: dict[str, str] | None = None, **kw: Any) -> subprocess.CompletedProcess:
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, check=False, **kw)
    if proc.returncode != 0:
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-15:])
        if "No space left on device" in tail:
            raise InstallError(f"disk full while {what}: {tail}")
        raise InstallError(f"{what} failed (exit {proc.returncode}): {tail}")
    return proc


def _install_images(bundle: Path, release: Path, copy: _Copier, manifest: Manifest,
                    opts: InstallOptions) -> dict[str, Any]:
    env = _images.podman_env(CONTAINERS_CONF if CONTAINERS_CONF.is_file() else None)
    locked = _images.read_lock(copy.dest)
    loaded: dict[str, str] = {}
    _step(opts, "images")
    for n, entry in enumerate(manifest.images, 1):
        _say(f"image [{n}/{len(manifest.images)}] {entry.name}: loading {entry.digest}")
        loaded[entry.name] = _images.load_image(bundle, locked[entry.name], env)
    roles = {e.role: loaded[e.name] for e in manifest.images}
    out: dict[str, Any] = {"loaded": loaded}
    if "harness-base" in roles:
        _step(opts, "harness-image")
        out["harness"] = _build_harness_image(copy, release, roles["harness-base"], manifest, env)
        roles["harness"] = out["harness"]
    _step(opts, "stack")
    out["stack"] = str(_write_stack(release, manifest, roles, opts))
    return out


def _build_harness_image(copy: _Copier, release: Path, base: str, manifest: Manifest, env: dict[str, str]) -> str:
    ctx = release / "harness-context"
    ctx.mkdir()
    tools = json.loads((copy.dest / "lockfiles" / "tools.json").read_text(encoding="utf-8"))
    sub = _Copier(copy.src, ctx, copy.digests)
    for rel in sorted(r for r in copy.digests if r.startswith("wheelhouse/") or r.startswith("tools/")):
        sub(rel)
    sub("lockfiles/pylock.toml")
    sub("images/harness/Containerfile")
    shutil.copy2(release / "uv", ctx / "uv")
    (ctx / "self.txt").write_text(
        f"appliance @ file:///opt/appliance/{tools['appliance']['wheel']} --hash=sha256:{tools['appliance']['sha256']}\n",
        encoding="utf-8")
    tag = f"localhost/appliance/harness:{manifest.version}"
    _say(f"building {tag} from {base} (podman build --network none)")
    _run(["podman", "build", "--network", "none", "--pull=never", "--build-arg", f"BASE={base}",
          "-t", tag, "-f", str(ctx / "images/harness/Containerfile"), str(ctx)], "building the harness image", env)
    shutil.rmtree(ctx)
    return tag


def _write_stack(release: Path, manifest: Manifest, roles: dict[str, str], opts: InstallOptions) -> Path:
    from appliance._internal.stack import StackImages, render_stack

    model = manifest.models[0] if manifest.models else None
    yaml = render_stack(
        StackImages(vllm=roles.get("vllm"), collector=roles.get("collector"), jaeger=roles.get("jaeger"),
                    prometheus=roles.get("prometheus"), grafana=roles.get("grafana")),
        release / "stack",
        model_dir=(release / "bundle" / model.path) if model else None,
        model_name=model.name if model else "model",
        publish_host=opts.publish_host, ports=opts.stack_ports,
    )
    return yaml


# --- switching --------------------------------------------------------------------------------------------


def _link(root: Path, name: str, rid: str) -> None:
    """Point ``root/name`` at ``releases/rid`` with one atomic rename."""
    tmp = root / f".{name}.tmp"
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(Path("releases") / rid)
    os.replace(tmp, root / name)


def _target(root: Path, name: str) -> str | None:
    try:
        return Path(os.readlink(root / name)).name
    except FileNotFoundError:
        return None


def _switch(root: Path, rid: str) -> None:
    current = _target(root, "current")
    if current == rid:
        return
    if current:
        _link(root, "previous", current)
    _link(root, "current", rid)
    _fsync_dir(root)
    _say(f"current -> releases/{rid}" + (f" (previous: {current})" if current else ""))


def rollback(prefix: Path | None = None) -> str:
    """Make ``previous`` current again (and the current one previous); returns the release now current."""
    root = install_root(prefix)
    with _locked(root):
        prev, cur = _target(root, "previous"), _target(root, "current")
        if not prev or not (root / "releases" / prev / RECEIPT).is_file():
            raise InstallError(f"nothing to roll back to in {root}")
        _link(root, "current", prev)
        if cur:
            _link(root, "previous", cur)
        _fsync_dir(root)
        _write_attempt(root, {"release": prev, "result": "rolled-back", "from": cur,
                              "finished": utcnow().isoformat()})
        return prev


def _stack_yaml(prefix: Path | None) -> Path:
    root = install_root(prefix)
    rid = _target(root, "current")
    if not rid:
        raise InstallError(f"nothing is installed in {root}")
    yaml = root / "releases" / rid / "stack" / "stack.yaml"
    if not yaml.is_file():
        raise InstallError(f"release {rid} has no stack (its bundle has no stack images, or it was installed --no-images)")
    return yaml


def stack_up(prefix: Path | None = None) -> Path:
    """Start (or replace) the current release's stack; returns its YAML."""
    from appliance._internal.stack import start_stack

    yaml = _stack_yaml(prefix)
    start_stack(yaml, replace=True)
    return yaml


def stack_down(prefix: Path | None = None) -> Path:
    from appliance._internal.stack import stop_stack

    yaml = _stack_yaml(prefix)
    stop_stack(yaml)
    return yaml


def status(prefix: Path | None = None, *, stack: bool = True) -> dict[str, Any]:
    """What is installed, from which bundle, and whether each stack part is up."""
    root = install_root(prefix)
    out: dict[str, Any] = {"prefix": str(root), "current": None, "previous": None, "stack": {}}
    for name in ("current", "previous"):
        rid = _target(root, name)
        if rid:
            try:
                out[name] = json.loads((root / "releases" / rid / RECEIPT).read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:
                out[name] = {"release": rid, "error": f"receipt unreadable: {exc}"}
    receipts = sorted((root / "receipts").glob("*.json")) if (root / "receipts").is_dir() else []
    out["attempts"] = len(receipts)
    if receipts:
        out["last_attempt"] = json.loads(receipts[-1].read_text(encoding="utf-8"))
    cur = out["current"]
    if stack and cur and cur.get("images", {}).get("stack"):
        try:
            from appliance._internal.stack import stack_status

            out["stack"] = stack_status()
        except ApplianceError as exc:
            out["stack"] = {"error": str(exc)}
    return out


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)
