"""The box's serving and observability stack as plain Kubernetes YAML, run by ``podman kube play``.

One Pod (``apiVersion: v1``): the same document a fleet applies to a k3s node.
Its containers share one network namespace, so each listens on its own port:

    vllm          0.0.0.0:8000   OpenAI-compatible API (model dir mounted read-only)
    collector     0.0.0.0:4317/4318  OTLP in; traces -> Jaeger, metrics -> :8889 for Prometheus
    jaeger        127.0.0.1:14317 OTLP in (from the collector only), 0.0.0.0:16686 UI
    prometheus    0.0.0.0:9090   scrapes the collector and vLLM
    grafana       0.0.0.0:3000   provisioned data sources and the "appliance agent" dashboard

Every published port binds the host's 127.0.0.1 (``hostIP``) unless the
operator names another address. Nothing phones home: HF offline, vLLM usage
stats off, Grafana update checks and reporting off. The document is written as
JSON, which is YAML (podman and kubectl read it as such).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from appliance.errors import InstallError

ASSETS = Path(__file__).parent / "stack_assets"
CONTAINERS_CONF = ASSETS / "containers.conf"

DEFAULT_PORTS = {"vllm": 8000, "otlp-grpc": 4317, "otlp-http": 4318, "jaeger-ui": 16686,
                 "prometheus": 9090, "grafana": 3000}
JAEGER_OTLP = 14317
COLLECTOR_METRICS = 8889


@dataclass(frozen=True)
class StackImages:
    """Local image references (as loaded into podman storage) for each part; None leaves a part out."""

    vllm: str | None = None
    collector: str | None = None
    jaeger: str | None = None
    prometheus: str | None = None
    grafana: str | None = None


def _yaml_text(doc: Any) -> str:
    return json.dumps(doc, indent=2) + "\n"


def collector_config(images: StackImages) -> dict[str, Any]:
    exporters: dict[str, Any] = {}
    pipelines: dict[str, Any] = {}
    if images.jaeger:
        exporters["otlp/jaeger"] = {"endpoint": f"127.0.0.1:{JAEGER_OTLP}", "tls": {"insecure": True}}
        pipelines["traces"] = {"receivers": ["otlp"], "processors": ["batch"], "exporters": ["otlp/jaeger"]}
    if images.prometheus:
        exporters["prometheus"] = {"endpoint": f"0.0.0.0:{COLLECTOR_METRICS}", "resource_to_telemetry_conversion": {"enabled": True}}
        pipelines["metrics"] = {"receivers": ["otlp"], "processors": ["batch"], "exporters": ["prometheus"]}
    if not pipelines:  # nothing downstream: accept and drop, so the harness's exports still succeed
        exporters["debug"] = {"verbosity": "basic"}
        pipelines["traces"] = {"receivers": ["otlp"], "processors": ["batch"], "exporters": ["debug"]}
    return {
        "receivers": {"otlp": {"protocols": {"grpc": {"endpoint": "0.0.0.0:4317"}, "http": {"endpoint": "0.0.0.0:4318"}}}},
        "processors": {"batch": {}},
        "exporters": exporters,
        "service": {"pipelines": pipelines},
    }


def jaeger_config() -> dict[str, Any]:
    """Jaeger v2 (an OpenTelemetry Collector distribution): in-memory store, OTLP only from inside the pod."""
    return {
        "service": {
            "extensions": ["jaeger_storage", "jaeger_query"],
            "pipelines": {"traces": {"receivers": ["otlp"], "processors": ["batch"], "exporters": ["jaeger_storage_exporter"]}},
        },
        "extensions": {
            "jaeger_query": {"storage": {"traces": "memstore"}, "ui": {}, "http": {"endpoint": "0.0.0.0:16686"}},
            "jaeger_storage": {"backends": {"memstore": {"memory": {"max_traces": 100000}}}},
        },
        "receivers": {"otlp": {"protocols": {"grpc": {"endpoint": f"127.0.0.1:{JAEGER_OTLP}"},
                                             "http": {"endpoint": f"127.0.0.1:{JAEGER_OTLP + 1}"}}}},
        "processors": {"batch": {}},
        "exporters": {"jaeger_storage_exporter": {"trace_storage": "memstore"}},
    }


def prometheus_config(images: StackImages) -> dict[str, Any]:
    jobs = []
    if images.collector:
        jobs.append({"job_name": "otel-collector", "static_configs": [{"targets": [f"127.0.0.1:{COLLECTOR_METRICS}"]}]})
    if images.vllm:
        jobs.append({"job_name": "vllm", "static_configs": [{"targets": ["127.0.0.1:8000"]}]})
    return {"global": {"scrape_interval": "15s"}, "scrape_configs": jobs}


def grafana_datasources(images: StackImages) -> dict[str, Any]:
    sources = []
    if images.prometheus:
        sources.append({"name": "Prometheus", "uid": "prometheus", "type": "prometheus", "access": "proxy",
                        "url": "http://127.0.0.1:9090", "isDefault": True})
    if images.jaeger:
        sources.append({"name": "Jaeger", "uid": "jaeger", "type": "jaeger", "access": "proxy",
                        "url": "http://127.0.0.1:16686"})
    return {"apiVersion": 1, "datasources": sources}


def _panel(n: int, title: str, expr: str, unit: str = "short", legend: str = "") -> dict[str, Any]:
    return {
        "id": n, "type": "timeseries", "title": title,
        "gridPos": {"x": (n - 1) % 2 * 12, "y": (n - 1) // 2 * 8, "w": 12, "h": 8},
        "datasource": {"type": "prometheus", "uid": "prometheus"},
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "targets": [{"refId": "A", "expr": expr, "legendFormat": legend}],
    }


# Prometheus names of the harness's metrics (appliance/harness/telemetry.py) after the collector's
# prometheus exporter: dots become underscores, units become suffixes, counters end in _total.
DASHBOARD_METRICS = {
    "iterations": "appliance_agent_iterations_total",
    "tool_calls": "appliance_agent_tool_calls_total",
    "checks": "appliance_agent_checks_total",
    "tokens": "gen_ai_client_token_usage_sum",
    "latency": "gen_ai_client_operation_duration_seconds_bucket",
}


def dashboard() -> dict[str, Any]:
    m = DASHBOARD_METRICS
    return {
        "uid": "appliance-agent", "title": "appliance agent", "schemaVersion": 39, "editable": False,
        "time": {"from": "now-1h", "to": "now"}, "refresh": "30s", "tags": ["appliance"],
        "panels": [
            _panel(1, "Loop iterations / min", f"sum(rate({m['iterations']}[5m])) * 60"),
            _panel(2, "Tokens / min (input, output)",
                   f"sum by (gen_ai_token_type) (rate({m['tokens']}[5m])) * 60", legend="{{gen_ai_token_type}}"),
            _panel(3, "Tool calls / min", f"sum by (gen_ai_tool_name) (rate({m['tool_calls']}[5m])) * 60",
                   legend="{{gen_ai_tool_name}}"),
            _panel(4, "Check pass rate",
                   f'sum(rate({m["checks"]}{{appliance_check_passed="true"}}[15m])) / sum(rate({m["checks"]}[15m]))',
                   unit="percentunit"),
            _panel(5, "LLM latency p50 / p95",
                   f"histogram_quantile(0.95, sum by (le) (rate({m['latency']}[5m])))", unit="s", legend="p95"),
        ],
    }


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def _port(name: str, container: int, host_ip: str, host: int) -> dict[str, Any]:
    return {"name": name, "containerPort": container, "hostPort": host, "hostIP": host_ip, "protocol": "TCP"}


def _file_mount(name: str, path: Path, mount: str) -> tuple[dict[str, Any], dict[str, Any]]:
    kind = "Directory" if path.is_dir() else "File"
    return ({"name": name, "mountPath": mount, "readOnly": True},
            {"name": name, "hostPath": {"path": str(path.resolve()), "type": kind}})


def render_stack(images: StackImages, out_dir: Path, *, model_dir: Path | None, model_name: str = "model",
                 publish_host: str = "127.0.0.1", pod_name: str = "appliance", ports: Mapping[str, int] | None = None,
                 vllm_args: list[str] | None = None) -> Path:
    """Write ``stack.yaml`` and the configs it mounts under ``out_dir``; returns the YAML path."""
    out_dir = out_dir.resolve()
    host = {**DEFAULT_PORTS, **(ports or {})}
    containers: list[dict[str, Any]] = []
    volumes: list[dict[str, Any]] = []
    offline_env = [{"name": "DO_NOT_TRACK", "value": "1"}]

    if images.vllm:
        if model_dir is None:
            raise InstallError("the stack has a vLLM image but the bundle has no model directory")
        mount, vol = _file_mount("model", model_dir, f"/models/{model_name}")
        volumes.append(vol)
        containers.append({
            "name": "vllm", "image": images.vllm,
            "args": ["--model", f"/models/{model_name}", "--served-model-name", model_name,
                     "--host", "0.0.0.0", "--port", "8000", *(vllm_args or [])],
            "env": offline_env + [{"name": k, "value": "1"} for k in
                                  ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "VLLM_NO_USAGE_STATS", "HF_HUB_DISABLE_TELEMETRY")],
            "ports": [_port("openai", 8000, publish_host, host["vllm"])],
            "volumeMounts": [mount],
        })
    def configured(name: str, image: str | None, file: str, doc: dict[str, Any], args: list[str],
                   ports: list[dict[str, Any]]) -> None:
        """A part configured by one file of ours, mounted read-only at /etc/appliance/<file>."""
        if not image:
            return
        mount, vol = _file_mount(f"{name}-config", _write(out_dir / file, _yaml_text(doc)), f"/etc/appliance/{file}")
        volumes.append(vol)
        containers.append({"name": name, "image": image, "args": args, "env": offline_env, "ports": ports,
                           "volumeMounts": [mount]})

    configured("collector", images.collector, "collector.yaml", collector_config(images),
               ["--config=/etc/appliance/collector.yaml"],
               [_port("otlp-grpc", 4317, publish_host, host["otlp-grpc"]),
                _port("otlp-http", 4318, publish_host, host["otlp-http"])])
    configured("jaeger", images.jaeger, "jaeger.yaml", jaeger_config(), ["--config=/etc/appliance/jaeger.yaml"],
               [_port("ui", 16686, publish_host, host["jaeger-ui"])])
    configured("prometheus", images.prometheus, "prometheus.yml", prometheus_config(images),
               ["--config.file=/etc/appliance/prometheus.yml", "--web.listen-address=0.0.0.0:9090"],
               [_port("web", 9090, publish_host, host["prometheus"])])
    if images.grafana:
        prov = out_dir / "grafana" / "provisioning"
        _write(prov / "datasources" / "appliance.yaml", _yaml_text(grafana_datasources(images)))
        _write(prov / "dashboards" / "appliance.yaml", _yaml_text({"apiVersion": 1, "providers": [{
            "name": "appliance", "type": "file", "disableDeletion": True, "allowUiUpdates": False,
            "options": {"path": "/var/lib/appliance/dashboards"}}]}))
        _write(out_dir / "grafana" / "dashboards" / "appliance-agent.json", json.dumps(dashboard(), indent=2) + "\n")
        m1, v1 = _file_mount("grafana-provisioning", prov, "/etc/grafana/provisioning")
        m2, v2 = _file_mount("grafana-dashboards", out_dir / "grafana" / "dashboards", "/var/lib/appliance/dashboards")
        volumes += [v1, v2]
        env = {"GF_AUTH_ANONYMOUS_ENABLED": "true", "GF_AUTH_ANONYMOUS_ORG_ROLE": "Viewer",
               "GF_ANALYTICS_REPORTING_ENABLED": "false", "GF_ANALYTICS_CHECK_FOR_UPDATES": "false",
               "GF_ANALYTICS_CHECK_FOR_PLUGIN_UPDATES": "false", "GF_NEWS_NEWS_FEED_ENABLED": "false",
               "GF_PLUGINS_PUBLIC_KEY_RETRIEVAL_ON_STARTUP": "false", "GF_SERVER_HTTP_ADDR": "0.0.0.0",
               "GF_SERVER_HTTP_PORT": "3000"}
        containers.append({
            "name": "grafana", "image": images.grafana,
            "env": offline_env + [{"name": k, "value": v} for k, v in env.items()],
            "ports": [_port("web", 3000, publish_host, host["grafana"])],
            "volumeMounts": [m1, m2],
        })
    if not containers:
        raise InstallError("the stack has no parts: the bundle lists no stack images")
    pod = {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": pod_name, "labels": {"app.kubernetes.io/name": "appliance",
                                                   "app.kubernetes.io/part-of": "appliance"}},
        "spec": {"restartPolicy": "Always", "containers": containers, "volumes": volumes},
    }
    return _write(out_dir / "stack.yaml", _yaml_text(pod))


def _env(containers_conf: Path | None) -> dict[str, str]:
    env = dict(os.environ)
    conf = containers_conf or CONTAINERS_CONF
    if "CONTAINERS_CONF" not in env and conf.is_file():
        env["CONTAINERS_CONF"] = str(conf)
    return env


def _podman(args: list[str], what: str, containers_conf: Path | None) -> subprocess.CompletedProcess:
    exe = shutil.which("podman")
    if not exe:
        raise InstallError("podman not found: install it (apt-get install podman)")
    proc = subprocess.run([exe, *args], capture_output=True, text=True, env=_env(containers_conf), check=False)
    if proc.returncode != 0:
        raise InstallError(f"{what}: {proc.stderr.strip()[-2000:] or f'exit {proc.returncode}'}")
    return proc


def start_stack(yaml_path: Path, *, replace: bool = True, containers_conf: Path | None = None) -> None:
    _podman(["kube", "play", *(["--replace"] if replace else []), str(yaml_path)], "starting the stack", containers_conf)


def stop_stack(yaml_path: Path, *, containers_conf: Path | None = None) -> None:
    try:
        _podman(["kube", "down", str(yaml_path)], "stopping the stack", containers_conf)
    except InstallError as exc:
        if "no such pod" not in str(exc).lower():
            raise


def stack_status(pod_name: str = "appliance", *, containers_conf: Path | None = None) -> dict[str, str]:
    """Container name (without the pod prefix) -> state; parts of the YAML not found are missing."""
    proc = _podman(["ps", "-a", "--format", "json", "--filter", f"pod={pod_name}"], "reading the stack", containers_conf)
    out: dict[str, str] = {}
    for c in json.loads(proc.stdout or "[]"):
        if c.get("IsInfra"):
            continue
        name = (c.get("Names") or ["?"])[0]
        out[name.removeprefix(f"{pod_name}-")] = str(c.get("State", "unknown")).lower()
    return out
