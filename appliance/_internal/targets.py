"""What one spec target is, in the terms of packaging: marker environment and wheel tags.

A target (``python = "3.11"``, ``platform = "manylinux_2_28_x86_64"``) is a
CPython on glibc Linux. Markers are evaluated against :func:`marker_env`; wheels
are ranked by :func:`wheel_tags` (most specific first), which lists the full
manylinux ladder the target's glibc accepts: ``manylinux_2_N_arch`` from the
target's N down to 17, the legacy aliases (manylinux2014, and for x86_64
manylinux2010 and manylinux1), never a bare ``linux_arch`` tag.
"""

from __future__ import annotations

from packaging import tags

from appliance.spec import Target

_LEGACY = {"x86_64": ("manylinux2014", "manylinux2010", "manylinux1"), "aarch64": ("manylinux2014",)}


def marker_env(target: Target) -> dict[str, str]:
    """The PEP 508 marker environment of ``target`` (a CPython on Linux)."""
    return {
        "implementation_name": "cpython",
        "implementation_version": f"{target.python}.0",
        "os_name": "posix",
        "platform_machine": target.arch,
        "platform_python_implementation": "CPython",
        "platform_release": "",
        "platform_system": "Linux",
        "platform_version": "",
        "python_full_version": f"{target.python}.0",
        "python_version": target.python,
        "sys_platform": "linux",
    }


def uv_marker(target: Target) -> str:
    """The environment marker uv resolves ``target`` under (``[tool.uv] environments``)."""
    return (
        f"sys_platform == 'linux' and platform_machine == '{target.arch}' "
        f"and python_version == '{target.python}'"
    )


def platforms(target: Target) -> list[str]:
    """Platform tags the target accepts, most specific first."""
    major, minor = target.glibc
    out = [f"manylinux_{major}_{n}_{target.arch}" for n in range(minor, 16, -1)]
    return out + [f"{legacy}_{target.arch}" for legacy in _LEGACY[target.arch]]


def wheel_tags(target: Target) -> list[tags.Tag]:
    """Every wheel tag the target installs, best first (cpython tags, then generic ones)."""
    version = tuple(int(p) for p in target.python.split("."))
    plats = platforms(target)
    return [
        *tags.cpython_tags(version, platforms=plats),
        *tags.compatible_tags(version, interpreter=f"cp{target.python.replace('.', '')}", platforms=plats),
    ]
