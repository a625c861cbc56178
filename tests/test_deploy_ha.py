"""deploy/kubernetes/ha (issue 21): three replicas on a shared PostgreSQL ledger. They parse, and their pieces
agree: a rolling update and a disruption budget that leave replicas running, no volume (the ledger is the
database), the DSN from a Secret that has it, a receiver config our own parser accepts with the postgresql backend,
probes on /live and /ready on the health port. Nothing here starts a container (as tests/test_deploy.py).
"""

from __future__ import annotations

from pathlib import PurePosixPath
from typing import Any

import yaml

from otel_llm_receiver.config import Config, parse_config
from otel_llm_receiver.config_storage import MAX_LEASE_DURATION, MIN_LEASE_DURATION, dsn_problem, parse_dsn
from otel_llm_receiver.replicas import REPLICA_ID_ENV, replica_id, replica_label
from tests.test_deploy import K8S, SECRET, host_of, k8s_objects, one, port_of, receiver_container

OBJECTS = k8s_objects("ha")
DEPLOYMENT = one(OBJECTS, "Deployment")
POD = DEPLOYMENT["spec"]["template"]["spec"]
RECEIVER = receiver_container(POD)
LEDGER_SECRET = yaml.safe_load((K8S / "ha" / "ledger-secret.example.yaml").read_text(encoding="utf-8"))


def _secret_env() -> dict[str, str]:
    """The pod's environment as the example Secrets would fill it."""
    secrets = {s["metadata"]["name"]: s["stringData"] for s in (SECRET, LEDGER_SECRET)}
    env: dict[str, str] = {}
    for e in RECEIVER["env"]:
        if "value" in e:
            env[e["name"]] = e["value"]
        elif "fieldRef" in e["valueFrom"]:
            assert e["valueFrom"]["fieldRef"] == {"fieldPath": "metadata.name"}, e
            env[e["name"]] = "otel-llm-receiver-7d9f8-abcde"  # the pod's name
        else:
            ref = e["valueFrom"]["secretKeyRef"]
            env[e["name"]] = secrets[ref["name"]][ref["key"]]
    return env


def test_the_replica_is_named_after_its_pod() -> None:
    """Lease ids and the self-health series' ``llm.receiver.replica`` come from the pod name (docs/deployment.md, high availability)."""
    (replica_env,) = [e for e in RECEIVER["env"] if e["name"] == REPLICA_ID_ENV]
    assert replica_env["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    env = _secret_env()
    assert replica_label(replica_id(env), env) == "otel-llm-receiver-7d9f8-abcde"
    assert replica_id(env).startswith("otel-llm-receiver-7d9f8-abcde-")


def receiver_config() -> Config:
    config_path = PurePosixPath(RECEIVER["args"][RECEIVER["args"].index("--config") + 1])
    mount = next(m for m in RECEIVER["volumeMounts"] if config_path.is_relative_to(m["mountPath"]))
    volume = next(v for v in POD["volumes"] if v["name"] == mount["name"])
    text = OBJECTS[("ConfigMap", volume["configMap"]["name"])]["data"][str(config_path.relative_to(mount["mountPath"]))]
    return parse_config(yaml.safe_load(text), environ=_secret_env())


def test_three_replicas_rolling_with_a_disruption_budget() -> None:
    spec = DEPLOYMENT["spec"]
    assert spec["replicas"] == 3
    assert spec["strategy"]["type"] == "RollingUpdate" and spec["strategy"]["rollingUpdate"]["maxUnavailable"] == 1
    labels = spec["template"]["metadata"]["labels"]
    assert spec["selector"]["matchLabels"].items() <= labels.items()
    pdb = one(OBJECTS, "PodDisruptionBudget")
    assert pdb["apiVersion"] == "policy/v1"
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    # A drain may take one replica at a time, and never blocks forever: some disruption is always allowed.
    allowed = pdb["spec"].get("maxUnavailable", spec["replicas"] - pdb["spec"].get("minAvailable", 0))
    assert 1 <= allowed < spec["replicas"]
    (spread,) = POD["topologySpreadConstraints"]
    assert spread["topologyKey"] == "kubernetes.io/hostname"
    assert spread["labelSelector"]["matchLabels"].items() <= labels.items()


def test_no_volume_holds_a_ledger() -> None:
    assert not [key for key in OBJECTS if key[0] == "PersistentVolumeClaim"]
    assert all("persistentVolumeClaim" not in v for v in POD["volumes"])
    assert {v["name"] for v in POD["volumes"]} == {"config", "tmp"}
    assert POD["securityContext"]["runAsNonRoot"] is True and POD["securityContext"]["runAsUser"] != 0
    context = RECEIVER["securityContext"]
    assert context["readOnlyRootFilesystem"] is True and context["allowPrivilegeEscalation"] is False
    assert context["capabilities"]["drop"] == ["ALL"]
    assert ":" in RECEIVER["image"] and not RECEIVER["image"].endswith(":latest")


def test_the_config_is_postgresql_with_the_dsn_from_the_secret() -> None:
    config = receiver_config()
    storage = config.storage
    assert storage.backend == "postgresql"
    assert MIN_LEASE_DURATION <= storage.lease_duration <= MAX_LEASE_DURATION
    (dsn_env,) = [e for e in RECEIVER["env"] if e["name"] == "LEDGER_DSN"]
    ref = dsn_env["valueFrom"]["secretKeyRef"]
    assert ref["name"] == LEDGER_SECRET["metadata"]["name"] and ref["key"] in LEDGER_SECRET["stringData"]
    assert not ref.get("optional", False)  # no DSN, no ledger: the pod must not start without it
    assert storage.dsn == LEDGER_SECRET["stringData"][ref["key"]]
    text = yaml.safe_load(OBJECTS[("ConfigMap", "otel-llm-receiver-ha-config")]["data"]["config.yaml"])
    assert text["storage"]["dsn"] == "${env:LEDGER_DSN}"  # the ConfigMap never holds the DSN itself
    (exporter,) = config.exporters
    assert host_of(exporter.endpoint) == "otel-collector" and port_of(exporter.endpoint) == 4317


def test_the_example_dsn_is_well_formed_and_verifies_the_server() -> None:
    dsn = LEDGER_SECRET["stringData"]["LEDGER_DSN"]
    assert dsn_problem(dsn) is None
    keywords = parse_dsn(dsn)
    assert keywords["sslmode"] == "verify-full" and "example" in keywords["password"]
    assert keywords["host"].endswith(".example.internal")


def test_probes_on_live_and_ready_on_the_health_port() -> None:
    config = receiver_config()
    assert config.health.endpoint.startswith("0.0.0.0:")
    named = {p["name"]: p["containerPort"] for p in RECEIVER["ports"]}
    for probe, path in (("readinessProbe", "/ready"), ("livenessProbe", "/live")):
        get = RECEIVER[probe]["httpGet"]
        assert get["path"] == path and named.get(get["port"], get["port"]) == port_of(config.health.endpoint)
    service = one(OBJECTS, "Service")
    assert service["spec"]["selector"].items() <= DEPLOYMENT["spec"]["template"]["metadata"]["labels"].items()
    assert {p["targetPort"] for p in service["spec"]["ports"]} <= set(named)


def test_grace_period_and_lease_duration_bound_a_failover() -> None:
    """SIGTERM must leave time for the last poll and export (60s), and the lease must be short enough that a pod
    killed without it is replaced in well under a minute of unpolled instances."""
    config = receiver_config()
    assert POD["terminationGracePeriodSeconds"] >= 30
    assert config.storage.lease_duration <= 60


def _containers(objects: dict[tuple[str, str], dict[str, Any]]) -> list[dict[str, Any]]:
    return list(one(objects, "Deployment")["spec"]["template"]["spec"]["containers"])


def test_the_ha_variant_uses_the_same_image_as_the_single_replica_ones() -> None:
    (standalone,) = _containers(k8s_objects("standalone"))
    assert RECEIVER["image"] == standalone["image"]
