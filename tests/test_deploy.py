"""The docker compose stack and the Kubernetes manifests: they parse, and their pieces agree with each other.

Nothing here starts a container (CI has no Docker daemon to rely on): the checks are the mistakes that break
a stack at start or leave it silently empty, i.e. a mounted file that does not exist, a config path the
command does not read, an endpoint pointing at the wrong service or port, two things on one port, a receiver
config our own parser rejects, a probe on the wrong port, a Secret key that is not there.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml

from otel_llm_receiver.config import Config, parse_config
from tests.support.dashboards import DASHBOARD_DIR
from tests.support.prometheus_files import ROOT, load_rules, tool

COMPOSE_DIR = ROOT / "examples" / "compose"
COMPOSE = yaml.safe_load((COMPOSE_DIR / "docker-compose.yaml").read_text(encoding="utf-8"))
SERVICES: dict[str, Any] = COMPOSE["services"]
K8S = ROOT / "deploy" / "kubernetes"
VARIANTS = ("standalone", "sidecar")
ENV_REFERENCE = re.compile(r"\$\{env:([A-Za-z_][A-Za-z0-9_]*)")


def port_of(endpoint: str) -> int:
    return int(endpoint.rsplit(":", 1)[1].split("/")[0])


def host_of(endpoint: str) -> str:
    return endpoint.split("://")[-1].rsplit(":", 1)[0]


# ------------------------------------------------------------------------------------------------ compose
def mounts(service: str) -> dict[str, Path]:
    """container path -> host path (bind mounts only; named volumes are skipped)."""
    out = {}
    for spec in SERVICES[service].get("volumes", []):
        source, target = spec.split(":")[:2]
        if source.startswith((".", "/")):
            out[target] = (COMPOSE_DIR / source).resolve()
    return out


def mounted_file(service: str, container_path: str) -> Path:
    """The host file behind ``container_path``, through a file mount or a mounted parent directory."""
    for target, source in mounts(service).items():
        if container_path == target:
            return source
        if PurePosixPath(container_path).is_relative_to(target):
            return source / PurePosixPath(container_path).relative_to(target)
    raise AssertionError(f"{service}: {container_path} is not mounted")


def flag(service: str, name: str) -> str:
    """The value of ``--name=value`` or ``--name value`` in the service's command."""
    command = SERVICES[service]["command"]
    for i, arg in enumerate(command):
        if arg.startswith(f"--{name}="):
            return str(arg.split("=", 1)[1])
        if arg == f"--{name}":
            return str(command[i + 1])
    raise AssertionError(f"{service}: no --{name} in its command")


def published(service: str) -> dict[int, int]:
    """container port -> host port."""
    return {int(p.split(":")[1]): int(p.split(":")[0]) for p in SERVICES[service].get("ports", [])}


def compose_receiver_config() -> Config:
    path = mounted_file("receiver", flag("receiver", "config"))
    return parse_config(yaml.safe_load(path.read_text(encoding="utf-8")), environ={})


def test_compose_has_the_whole_path() -> None:
    assert set(SERVICES) == {"receiver-history", "prometheus-history", "receiver", "otel-collector", "prometheus",
                             "alertmanager", "grafana"}
    assert set(COMPOSE["volumes"]) == {"receiver-data", "prometheus-data"}


def depends(service: str) -> dict[str, str]:
    """The services ``service`` waits for -> the condition (a plain list means ``service_started``)."""
    deps = SERVICES[service].get("depends_on", {})
    if isinstance(deps, list):
        return dict.fromkeys(deps, "service_started")
    return {name: spec["condition"] for name, spec in deps.items()}


def named_volumes(service: str) -> dict[str, tuple[str, bool]]:
    """container path -> (named volume, read-only)."""
    out = {}
    for spec in SERVICES[service].get("volumes", []):
        source, target, *mode = spec.split(":")
        if not source.startswith((".", "/")):
            out[target] = (source, mode == ["ro"])
    return out


def test_compose_preloads_prometheus_with_the_receivers_history() -> None:
    # issue 18.12: the receiver's own image writes the history from the ledger the receiver then continues (same
    # config, same volume), promtool loads it into the volume Prometheus serves, and each waits for the step
    # before it to have *completed*: the history ends before the receiver's first export and before Prometheus
    # starts (Prometheus refuses samples older than its head once blocks exist).
    from otel_llm_receiver.cli import build_parser

    init, receiver = SERVICES["receiver-history"], SERVICES["receiver"]
    assert init["image"] == receiver["image"] and init["build"] == receiver["build"]
    assert init["volumes"] == receiver["volumes"] and init["read_only"] is True
    args = build_parser().parse_args(init["command"])
    assert args.command == "history" and args.config == flag("receiver", "config")
    ledger_dir = PurePosixPath(compose_receiver_config().storage.path).parent
    assert named_volumes("receiver")[str(ledger_dir)] == ("receiver-data", False)
    assert PurePosixPath(args.out).parent == ledger_dir  # in the receiver's volume, which it may write

    load, prometheus = SERVICES["prometheus-history"], SERVICES["prometheus"]
    assert load["image"] == prometheus["image"] and load["entrypoint"] == ["/bin/sh", "-c"]
    volumes = named_volumes("prometheus-history")
    history_dir = next(t for t, (v, ro) in volumes.items() if v == "receiver-data" and ro)
    storage = flag("prometheus", "storage.tsdb.path")
    assert volumes[storage] == ("prometheus-data", False) == named_volumes("prometheus")[storage]
    (script,) = load["command"]
    history_file = PurePosixPath(history_dir) / PurePosixPath(args.out).name
    assert f"promtool tsdb create-blocks-from openmetrics --max-block-duration=24h {history_file} {storage}" in script
    assert "chown -R 65534:65534" in script and load["user"] == "0:0"  # Prometheus (nobody) owns its blocks

    completed = "service_completed_successfully"
    assert depends("prometheus-history") == {"receiver-history": completed}
    assert depends("receiver")["receiver-history"] == completed
    assert depends("prometheus")["prometheus-history"] == completed
    assert init["restart"] == load["restart"] == "no"


def test_compose_history_load_runs_once(tmp_path: Path) -> None:
    # The init step's own script, run twice by a real shell with the real promtool over a small history: the
    # first run writes blocks and the marker, the second (the next `docker compose up`) leaves them alone.
    (script,) = SERVICES["prometheus-history"]["command"]
    storage, history = tmp_path / "prometheus", tmp_path / "history"
    storage.mkdir()
    history.mkdir()
    (history / "history.om").write_text(
        "# TYPE llm_usage_requests counter\n"
        + "".join(f'llm_usage_requests_total{{job="otel-llm-receiver"}} {i} {1_795_000_000 + 300 * i}\n'
                  for i in range(30))
        + "# EOF\n", encoding="utf-8")
    local = (script.replace(" /prometheus", f" {storage}").replace("/history/", f"{history}/")
             .replace("chown -R 65534:65534", "true"))  # ownership: the container's root; not the test's
    assert "/prometheus" not in local.replace(str(storage), "")
    env = {"PATH": str(Path(tool("promtool")).parent) + ":/usr/bin:/bin"}
    first = subprocess.run(["/bin/sh", "-c", local], env=env, capture_output=True, text=True, timeout=60)
    assert first.returncode == 0, first.stderr
    blocks = sorted(p.name for p in storage.iterdir() if (p / "meta.json").exists())
    assert blocks and (storage / ".history-loaded").exists()
    second = subprocess.run(["/bin/sh", "-c", local], env=env, capture_output=True, text=True, timeout=60)
    assert second.returncode == 0 and "history already loaded" in second.stdout
    assert sorted(p.name for p in storage.iterdir() if (p / "meta.json").exists()) == blocks


def test_compose_images_are_pinned_and_the_receiver_is_built_from_our_dockerfile() -> None:
    for name, service in SERVICES.items():
        image = service["image"]
        assert ":" in image and not image.endswith(":latest"), f"{name}: pin the image tag"
    build = SERVICES["receiver"]["build"]
    assert (COMPOSE_DIR / build["context"] / build["dockerfile"]).resolve() == ROOT / "Dockerfile"
    assert SERVICES["otel-collector"]["image"].startswith("otel/opentelemetry-collector-contrib:")
    collector_schema = yaml.safe_load((ROOT / "tests" / "schemas" / "otelcol-contrib.yaml").read_text())
    assert SERVICES["otel-collector"]["image"].endswith(":" + collector_schema["version"].lstrip("v"))


def test_compose_bind_mounts_exist() -> None:
    for name in SERVICES:
        for target, source in mounts(name).items():
            assert source.exists(), f"{name}: {source} (mounted at {target}) does not exist"


def test_compose_host_ports_are_unique() -> None:
    host_ports = [h for s in SERVICES for h in published(s).values()]
    assert len(host_ports) == len(set(host_ports))


def test_compose_receiver_exports_to_the_collector_it_runs() -> None:
    config = compose_receiver_config()
    (exporter,) = config.exporters
    collector = yaml.safe_load(mounted_file("otel-collector", flag("otel-collector", "config")).read_text())
    assert mounted_file("otel-collector", flag("otel-collector", "config")) == ROOT / "collector-config" / "prometheus.yaml"
    grpc = collector["receivers"]["otlp"]["protocols"]["grpc"]["endpoint"]
    assert exporter.protocol == "grpc" and host_of(exporter.endpoint) == "otel-collector"
    assert port_of(exporter.endpoint) == port_of(grpc)
    assert config.export_interval * 4 <= 300  # well under the Collector's metric_expiration (5m)
    health_port = port_of(config.health.endpoint)
    assert config.health.endpoint.startswith("0.0.0.0:") and health_port in published("receiver")
    assert PurePosixPath(config.storage.path).is_relative_to("/var/lib/otel-llm-receiver")  # the volume
    assert any(v.endswith(":/var/lib/otel-llm-receiver") for v in SERVICES["receiver"]["volumes"])


def test_compose_prometheus_scrapes_the_collector_and_loads_our_rules() -> None:
    config_path = mounted_file("prometheus", flag("prometheus", "config.file"))
    prom = yaml.safe_load(config_path.read_text(encoding="utf-8"))
    collector = yaml.safe_load((ROOT / "collector-config" / "prometheus.yaml").read_text(encoding="utf-8"))
    exporter_port = port_of(collector["exporters"]["prometheus"]["endpoint"])
    (job,) = [j for j in prom["scrape_configs"] if j["job_name"] == "otel-collector"]
    assert job["honor_labels"] is True
    assert job["static_configs"][0]["targets"] == [f"otel-collector:{exporter_port}"]
    rule_targets = {t for t in mounts("prometheus") if t.startswith("/etc/prometheus/rules/")}
    loaded = {t for t in rule_targets for pattern in prom["rule_files"] if PurePosixPath(t).match(pattern)}
    assert loaded == rule_targets
    assert {mounted_file("prometheus", t).name for t in loaded} == {"recording-rules.yaml", "alerts.yaml"}
    (am,) = prom["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"]
    assert host_of(am) == "alertmanager" and port_of(am) in published("alertmanager")
    proc = subprocess.run([tool("promtool"), "check", "config", "--syntax-only", str(config_path)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_compose_alertmanager_routes_and_inhibitions_are_consistent() -> None:
    am = yaml.safe_load(mounted_file("alertmanager", flag("alertmanager", "config.file")).read_text())
    receivers = {r["name"] for r in am["receivers"]}
    routes = [am["route"], *am["route"].get("routes", [])]
    assert all(r.get("receiver", am["route"]["receiver"]) in receivers for r in routes)
    alerts = {r.name for r in load_rules() if r.is_alert}
    for rule in am.get("inhibit_rules", []):
        for matcher in rule["source_matchers"] + rule["target_matchers"]:
            name, op, value = re.fullmatch(r'(\w+)(=~|=)"(.*)"', matcher).groups()  # type: ignore[union-attr]
            if name == "alertname":
                hits = {a for a in alerts if (re.fullmatch(value, a) if op == "=~" else a == value)}
                assert hits, f"inhibit rule matcher {matcher} matches no alert in alerts.yaml"


def test_compose_grafana_provisions_our_dashboards_from_our_prometheus() -> None:
    datasources = yaml.safe_load(mounted_file("grafana", "/etc/grafana/provisioning/datasources/prometheus.yaml").read_text())
    (ds,) = datasources["datasources"]
    assert host_of(ds["url"]) == "prometheus" and port_of(ds["url"]) in published("prometheus")
    provider_file = mounted_file("grafana", "/etc/grafana/provisioning/dashboards/otel-llm-receiver.yaml")
    (provider,) = yaml.safe_load(provider_file.read_text())["providers"]
    assert mounted_file("grafana", provider["options"]["path"]) == DASHBOARD_DIR
    home = SERVICES["grafana"]["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert mounted_file("grafana", home).exists()


# ------------------------------------------------------------------------------------------------ kubernetes
def k8s_objects(variant: str) -> dict[tuple[str, str], dict[str, Any]]:
    """(kind, name) -> object, for every resource the variant's kustomization lists."""
    base = K8S / variant
    kustomization = yaml.safe_load((base / "kustomization.yaml").read_text(encoding="utf-8"))
    objects = {}
    for resource in kustomization["resources"]:
        for doc in yaml.safe_load_all((base / resource).read_text(encoding="utf-8")):
            objects[(doc["kind"], doc["metadata"]["name"])] = doc
    return objects


def one(objects: dict[tuple[str, str], dict[str, Any]], kind: str) -> dict[str, Any]:
    (obj,) = [o for (k, _), o in objects.items() if k == kind]
    return obj


def receiver_container(pod: dict[str, Any]) -> dict[str, Any]:
    (c,) = [c for c in pod["containers"] if c["name"] == "receiver"]
    return dict(c)


SECRET = yaml.safe_load((K8S / "secret.example.yaml").read_text(encoding="utf-8"))


def k8s_receiver_config(objects: dict[tuple[str, str], dict[str, Any]]) -> Config:
    deployment = one(objects, "Deployment")
    container = receiver_container(deployment["spec"]["template"]["spec"])
    config_path = PurePosixPath(container["args"][container["args"].index("--config") + 1])
    volume = next(m for m in container["volumeMounts"] if config_path.is_relative_to(m["mountPath"]))
    pod_volume = next(v for v in deployment["spec"]["template"]["spec"]["volumes"] if v["name"] == volume["name"])
    configmap = objects[("ConfigMap", pod_volume["configMap"]["name"])]
    text = configmap["data"][str(config_path.relative_to(volume["mountPath"]))]
    env = {e["name"]: "sk-admin-test-0000" for e in container.get("env", [])}
    assert set(ENV_REFERENCE.findall(text)) <= set(env), "the config uses variables the pod does not set"
    return parse_config(yaml.safe_load(text), environ=env)


@pytest.mark.parametrize("variant", VARIANTS)
def test_k8s_deployment_is_one_hardened_replica_with_the_ledger_on_a_volume(variant: str) -> None:
    objects = k8s_objects(variant)
    deployment = one(objects, "Deployment")
    spec = deployment["spec"]
    assert spec["replicas"] == 1 and spec["strategy"]["type"] == "Recreate"
    pod = spec["template"]["spec"]
    assert spec["selector"]["matchLabels"].items() <= spec["template"]["metadata"]["labels"].items()
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] != 0
    for c in pod["containers"]:
        assert c["securityContext"]["readOnlyRootFilesystem"] is True, c["name"]
        assert c["securityContext"]["allowPrivilegeEscalation"] is False, c["name"]
        assert c["securityContext"]["capabilities"]["drop"] == ["ALL"], c["name"]
        assert {"cpu", "memory"} <= set(c["resources"]["requests"]) and "memory" in c["resources"]["limits"]
        assert ":" in c["image"] and not c["image"].endswith(":latest")
        for m in c.get("volumeMounts", []):
            assert any(v["name"] == m["name"] for v in pod["volumes"]), (c["name"], m["name"])
    ports = [p["containerPort"] for c in pod["containers"] for p in c.get("ports", [])]
    assert len(ports) == len(set(ports)), f"{variant}: two containers on one port in the pod"

    config = k8s_receiver_config(objects)
    receiver = receiver_container(pod)
    ledger_mount = next(m for m in receiver["volumeMounts"]
                        if PurePosixPath(config.storage.path).is_relative_to(m["mountPath"]))
    ledger_volume = next(v for v in pod["volumes"] if v["name"] == ledger_mount["name"])
    assert ("PersistentVolumeClaim", ledger_volume["persistentVolumeClaim"]["claimName"]) in objects
    health_port = port_of(config.health.endpoint)
    named = {p["name"]: p["containerPort"] for p in receiver["ports"]}
    # Liveness and readiness kept apart (issue 17.10): a Collector outage makes the pod not-ready, never restarts it.
    for probe, path in (("readinessProbe", "/ready"), ("livenessProbe", "/live")):
        get = receiver[probe]["httpGet"]
        assert get["path"] == path and named.get(get["port"], get["port"]) == health_port, probe
    assert config.health.endpoint.startswith("0.0.0.0:")


@pytest.mark.parametrize("variant", VARIANTS)
def test_k8s_secret_references_exist_in_the_example_secret(variant: str) -> None:
    pod = one(k8s_objects(variant), "Deployment")["spec"]["template"]["spec"]
    refs = [e["valueFrom"]["secretKeyRef"] for c in pod["containers"] for e in c.get("env", [])
            if "secretKeyRef" in e.get("valueFrom", {})]
    assert refs
    for ref in refs:
        assert ref["name"] == SECRET["metadata"]["name"] and ref["key"] in SECRET["stringData"]
    assert all(v.startswith("sk-") and "example" in v for v in SECRET["stringData"].values())


@pytest.mark.parametrize("variant", VARIANTS)
def test_k8s_service_targets_ports_the_pod_has(variant: str) -> None:
    objects = k8s_objects(variant)
    service, deployment = one(objects, "Service"), one(objects, "Deployment")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    names = {p["name"] for c in deployment["spec"]["template"]["spec"]["containers"] for p in c.get("ports", [])}
    assert {p["targetPort"] for p in service["spec"]["ports"]} <= names


def test_k8s_standalone_exports_to_a_collector_service() -> None:
    (exporter,) = k8s_receiver_config(k8s_objects("standalone")).exporters
    assert host_of(exporter.endpoint) == "otel-collector" and port_of(exporter.endpoint) == 4317


def test_k8s_sidecar_runs_our_collector_config_next_to_the_receiver() -> None:
    objects = k8s_objects("sidecar")
    pod = one(objects, "Deployment")["spec"]["template"]["spec"]
    (collector,) = [c for c in pod["containers"] if c["name"] == "otel-collector"]
    config_arg = next(a for a in collector["args"] if a.startswith("--config="))
    config_path = PurePosixPath(config_arg.split("=", 1)[1])
    mount = next(m for m in collector["volumeMounts"] if config_path.is_relative_to(m["mountPath"]))
    volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
    text = objects[("ConfigMap", volume["configMap"]["name"])]["data"][str(config_path.relative_to(mount["mountPath"]))]
    assert text == (ROOT / "collector-config" / "prometheus.yaml").read_text(encoding="utf-8")
    collector_config = yaml.safe_load(text)
    (exporter,) = k8s_receiver_config(objects).exporters
    grpc = collector_config["receivers"]["otlp"]["protocols"]["grpc"]["endpoint"]
    assert host_of(exporter.endpoint) in ("localhost", "127.0.0.1") and port_of(exporter.endpoint) == port_of(grpc)
    ports = {p["name"]: p["containerPort"] for p in collector["ports"]}
    assert ports["metrics"] == port_of(collector_config["exporters"]["prometheus"]["endpoint"])
    assert ports["collector-health"] == port_of(collector_config["extensions"]["health_check"]["endpoint"])
    assert collector["image"] == SERVICES["otel-collector"]["image"]
