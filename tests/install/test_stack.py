"""The stack's Kubernetes YAML and its configs, rendered without podman."""

from __future__ import annotations

import filecmp
import json
from pathlib import Path

import pytest

from appliance.errors import InstallError
from appliance._internal import stack
from appliance._internal.stack import StackImages, render_stack

REPO = Path(__file__).resolve().parents[2]
ALL = StackImages(vllm="localhost/v@sha256:1", collector="localhost/c:1", jaeger="localhost/j:1",
                  prometheus="localhost/p:1", grafana="localhost/g:1")


def render(tmp_path: Path, images: StackImages = ALL, **kw) -> dict:
    model = tmp_path / "model"
    model.mkdir(exist_ok=True)
    path = render_stack(images, tmp_path / "stack", model_dir=model, model_name="tiny", **kw)
    return json.loads(path.read_text())


def containers(pod: dict) -> dict[str, dict]:
    return {c["name"]: c for c in pod["spec"]["containers"]}


def test_one_plain_pod_published_on_loopback_only(tmp_path):
    pod = render(tmp_path)
    assert pod["apiVersion"] == "v1" and pod["kind"] == "Pod" and pod["metadata"]["name"] == "appliance"
    cs = containers(pod)
    assert list(cs) == ["vllm", "collector", "jaeger", "prometheus", "grafana"]
    ports = [p for c in cs.values() for p in c["ports"]]
    assert ports and all(p["hostIP"] == "127.0.0.1" for p in ports)
    assert sorted(p["hostPort"] for p in ports) == sorted(stack.DEFAULT_PORTS.values())
    # every config volume is a read-only hostPath that exists
    mounts = {m["name"]: m for c in cs.values() for m in c["volumeMounts"]}
    for vol in pod["spec"]["volumes"]:
        assert mounts[vol["name"]]["readOnly"] is True and Path(vol["hostPath"]["path"]).exists()


def test_operator_can_publish_elsewhere_and_move_ports(tmp_path):
    pod = render(tmp_path, publish_host="10.0.0.5", ports={"grafana": 3300})
    ports = {p["containerPort"]: p for c in containers(pod).values() for p in c["ports"]}
    assert {p["hostIP"] for p in ports.values()} == {"10.0.0.5"} and ports[3000]["hostPort"] == 3300


def test_vllm_serves_the_read_only_model_offline(tmp_path):
    vllm = containers(render(tmp_path))["vllm"]
    env = {e["name"]: e["value"] for e in vllm["env"]}
    assert env["HF_HUB_OFFLINE"] == env["VLLM_NO_USAGE_STATS"] == env["TRANSFORMERS_OFFLINE"] == "1"
    assert vllm["volumeMounts"] == [{"name": "model", "mountPath": "/models/tiny", "readOnly": True}]
    args = vllm["args"]
    assert args[args.index("--model") + 1] == "/models/tiny" and args[args.index("--served-model-name") + 1] == "tiny"


def test_collector_routes_traces_to_jaeger_and_metrics_to_prometheus(tmp_path):
    render(tmp_path)
    col = json.loads((tmp_path / "stack" / "collector.yaml").read_text())
    pipes = col["service"]["pipelines"]
    assert pipes["traces"]["exporters"] == ["otlp/jaeger"] and pipes["metrics"]["exporters"] == ["prometheus"]
    jaeger = json.loads((tmp_path / "stack" / "jaeger.yaml").read_text())
    jaeger_in = jaeger["receivers"]["otlp"]["protocols"]["grpc"]["endpoint"]
    assert col["exporters"]["otlp/jaeger"]["endpoint"] == jaeger_in  # no clash with the collector's 4317
    assert not jaeger_in.endswith(":4317")
    prom = json.loads((tmp_path / "stack" / "prometheus.yml").read_text())
    targets = [t for job in prom["scrape_configs"] for sc in job["static_configs"] for t in sc["targets"]]
    assert col["exporters"]["prometheus"]["endpoint"].split(":")[1] in {t.split(":")[1] for t in targets}


def test_grafana_is_provisioned_with_sources_and_the_dashboard(tmp_path):
    cs = containers(render(tmp_path))
    env = {e["name"]: e["value"] for e in cs["grafana"]["env"]}
    assert env["GF_ANALYTICS_CHECK_FOR_UPDATES"] == env["GF_ANALYTICS_REPORTING_ENABLED"] == "false"
    sources = json.loads((tmp_path / "stack/grafana/provisioning/datasources/appliance.yaml").read_text())
    assert {s["type"] for s in sources["datasources"]} == {"prometheus", "jaeger"}
    board = json.loads((tmp_path / "stack/grafana/dashboards/appliance-agent.json").read_text())
    exprs = " ".join(t["expr"] for p in board["panels"] for t in p["targets"])
    for metric in stack.DASHBOARD_METRICS.values():
        assert metric in exprs
    titles = " ".join(p["title"] for p in board["panels"]).lower()
    for what in ("iterations", "tokens", "tool calls", "pass rate", "latency"):
        assert what in titles


def test_dashboard_metric_names_follow_the_harness_metrics():
    """The Prometheus names are the harness's instrument names after the collector's translation."""
    from appliance.harness import telemetry

    source = Path(telemetry.__file__).read_text()
    for otel in ("appliance.agent.iterations", "appliance.agent.tool_calls", "appliance.agent.checks",
                 "gen_ai.client.token.usage", "gen_ai.client.operation.duration"):
        assert f'"{otel}"' in source
        prom = otel.replace(".", "_")
        assert any(m.startswith(prom) for m in stack.DASHBOARD_METRICS.values()), otel


def test_parts_without_an_image_are_left_out(tmp_path):
    pod = render(tmp_path, StackImages(collector="localhost/c:1"))
    assert list(containers(pod)) == ["collector"]
    col = json.loads((tmp_path / "stack" / "collector.yaml").read_text())
    assert "otlp/jaeger" not in col["exporters"] and "prometheus" not in col["exporters"]
    with pytest.raises(InstallError, match="no parts"):
        render(tmp_path, StackImages())
    with pytest.raises(InstallError, match="no model"):
        render_stack(StackImages(vllm="v"), tmp_path / "s2", model_dir=None)


def test_the_packaged_containers_conf_is_the_installer_one():
    assert filecmp.cmp(REPO / "installer" / "containers.conf", stack.CONTAINERS_CONF, shallow=False)
    text = stack.CONTAINERS_CONF.read_text()
    assert 'runtime = "runc"' in text and "nofile=1024:1024" in text and "nproc=1024:1024" in text
