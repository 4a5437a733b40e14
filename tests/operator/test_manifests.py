"""The pure manifest builders: spec in, the owned objects out."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
import yaml

from falachefe_operator import builders, naming
from falachefe_operator.builders import Resource, desired_objects
from falachefe_operator.spec import FalachefeSpec
from falachefe_runtime.config import CONFIG_FILE_ENV, RuntimeConfig, WorkerKind, env_name

UID = "1b4e28ba-2fa1-11d2-883f-0016d3cca427"


def resource(**spec: Any) -> Resource:
    base: dict[str, Any] = {
        "image": "falachefe:1.2",
        "database": {"secretRef": {"name": "db"}, "replicaSecretRef": {"name": "db-ro", "key": "replica"}},
        "redis": {"secretRef": {"name": "redis"}},
        "llm": {"model": "gpt-x", "baseURL": "http://llm:8000/v1", "apiKeySecretRef": {"name": "llm"}},
        "auth": {"otpSecretRef": {"name": "otp"}},
        "pools": {
            "auth": {"minReplicas": 2},
            "crew": {"minReplicas": 0, "terminationGracePeriodSeconds": 90, "jobTimeoutSeconds": 80},
        },
    }
    base.update(spec)
    parsed = FalachefeSpec.model_validate(base)
    # The workers run the spec's image: its migration is done (see test_migration_manifests).
    return Resource("shop", "team-a", UID, parsed, worker_image=parsed.image)


def by_key(objects: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {f"{o['kind']}/{o['metadata']['name']}": o for o in objects}


def container(deployment: dict[str, Any]) -> dict[str, Any]:
    (only,) = deployment["spec"]["template"]["spec"]["containers"]
    return dict(only)


def env(deployment: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container(deployment)["env"]}


def test_one_configmap_one_service_and_a_deployment_and_pdb_per_pool() -> None:
    objects = by_key(desired_objects(resource()))
    assert set(objects) == {
        "ConfigMap/shop-config",
        "Service/shop-metrics",
        "Deployment/shop-auth",
        "PodDisruptionBudget/shop-auth",
        "Deployment/shop-crew",
        "PodDisruptionBudget/shop-crew",
        "Job/" + builders.migration_job(resource())["metadata"]["name"],  # type: ignore[index]
    }
    assert set(objects) == {f"{kind}/{name}" for kind, name in builders.desired_keys(resource())}
    for obj in objects.values():
        assert obj["metadata"]["namespace"] == "team-a"
        (owner,) = obj["metadata"]["ownerReferences"]
        assert owner == {
            "apiVersion": "falachefe.io/v1alpha1",
            "kind": "Falachefe",
            "name": "shop",
            "uid": UID,
            "controller": True,
            "blockOwnerDeletion": True,
        }
        labels = obj["metadata"]["labels"]
        assert labels["app.kubernetes.io/managed-by"] == "falachefe-operator"
        assert labels["app.kubernetes.io/instance"] == "shop"
        assert labels["app.kubernetes.io/part-of"] == "falachefe"


def test_deployments_never_set_replicas_so_the_autoscaler_keeps_them() -> None:
    for obj in desired_objects(resource()):
        if obj["kind"] == "Deployment":
            assert "replicas" not in obj["spec"]


def test_worker_pod_contract() -> None:
    auth = by_key(desired_objects(resource()))["Deployment/shop-auth"]
    worker = container(auth)
    assert worker["command"] == ["falachefe-runtime", "worker", "--pool", "auth"]
    assert worker["image"] == "falachefe:1.2"
    assert {p["name"]: p["containerPort"] for p in worker["ports"]} == {"health": 8080, "metrics": 9102}
    assert worker["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert worker["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "health"}
    variables = env(auth)
    assert variables[CONFIG_FILE_ENV] == "/etc/falachefe/config.yaml"
    assert variables["FALACHEFE_WORKER__KIND"] == "auth"
    assert variables["FALACHEFE_WORKER__QUEUE"] == "whatsapp-processing"
    assert variables["FALACHEFE_WORKER__CONCURRENCY"] == "5"


def test_secrets_are_files_and_each_pool_gets_only_the_ones_it_uses() -> None:
    objects = by_key(desired_objects(resource()))
    expected = {
        "auth": {
            "database.dsn": ("db", "dsn"),
            "database.replica_dsn": ("db-ro", "replica"),
            "redis.url": ("redis", "url"),
            "auth.otp_secret": ("otp", "otpSecret"),
        },
        "crew": {
            "database.dsn": ("db", "dsn"),
            "database.replica_dsn": ("db-ro", "replica"),
            "redis.url": ("redis", "url"),
            "llm.api_key": ("llm", "apiKey"),
        },
    }
    for pool, secrets in expected.items():
        deployment = objects[f"Deployment/shop-{pool}"]
        variables = env(deployment)
        # No secret in the environment: only the path of its file.
        assert [value for value in variables.values() if isinstance(value, dict)] == []
        assert {name: value for name, value in variables.items() if name.endswith("_FILE") and "__" in name} == {
            env_name(setting) + "_FILE": f"/var/run/secrets/falachefe/{setting}" for setting in secrets
        }
        [volume] = [v for v in deployment["spec"]["template"]["spec"]["volumes"] if v["name"] == "secrets"]
        assert volume["projected"]["defaultMode"] == 0o440
        mounted = {
            item["path"]: (source["secret"]["name"], item["key"])
            for source in volume["projected"]["sources"]
            for item in source["secret"]["items"]
        }
        assert mounted == secrets
        [mount] = [m for m in container(deployment)["volumeMounts"] if m["name"] == "secrets"]
        assert mount == {"name": "secrets", "mountPath": "/var/run/secrets/falachefe", "readOnly": True}


def test_the_runtime_reads_the_secret_files_the_pod_would_mount(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What the kubelet would write at each path, the runtime's settings read back as the setting it names."""
    values = {
        "database.dsn": "postgresql://u:p@primary/x",
        "database.replica_dsn": "postgresql://u:p@replica/x",
        "redis.url": "redis://redis:6379/0",
        "llm.api_key": "sk-crew",
    }
    deployment = by_key(desired_objects(resource()))["Deployment/shop-crew"]
    for variable in container(deployment)["env"]:
        if variable["name"].endswith("_FILE") and variable["name"] != CONFIG_FILE_ENV:
            setting = Path(variable["value"]).name
            (tmp_path / setting).write_text(values[setting] + "\n")
            monkeypatch.setenv(variable["name"], str(tmp_path / setting))
    config = RuntimeConfig()
    assert config.llm.api_key is not None and config.llm.api_key.get_secret_value() == "sk-crew"
    assert config.database.replica_dsn is not None
    assert config.database.replica_dsn.get_secret_value() == "postgresql://u:p@replica/x"
    assert config.auth.otp_secret is None


def test_pods_are_locked_down() -> None:
    for obj in desired_objects(resource()):
        if obj["kind"] != "Deployment":
            continue
        pod = obj["spec"]["template"]["spec"]
        assert pod["securityContext"] == {
            "runAsNonRoot": True,
            "runAsUser": 10001,
            "runAsGroup": 10001,
            "fsGroup": 10001,
            "seccompProfile": {"type": "RuntimeDefault"},
        }
        assert pod["automountServiceAccountToken"] is False
        security = container(obj)["securityContext"]
        assert security["readOnlyRootFilesystem"] is True
        assert security["allowPrivilegeEscalation"] is False
        assert security["capabilities"] == {"drop": ["ALL"]}
        mounts = {m["mountPath"]: m["name"] for m in container(obj)["volumeMounts"]}
        assert mounts["/tmp"] == "tmp"
        assert {"name": "tmp", "emptyDir": {}} in pod["volumes"]


def test_termination_grace_outlasts_the_runtime_shutdown_grace() -> None:
    crew = by_key(desired_objects(resource()))["Deployment/shop-crew"]
    assert crew["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] == 90
    assert env(crew)["FALACHEFE_WORKER__SHUTDOWN_GRACE_S"] == "85"


def test_configmap_holds_the_runtime_config_without_secrets_and_the_runtime_reads_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config_map = by_key(desired_objects(resource(logLevel="DEBUG")))["ConfigMap/shop-config"]
    text = config_map["data"]["config.yaml"]
    config = yaml.safe_load(text)
    assert "dsn" not in config["database"] and "replica_dsn" not in config["database"]
    assert "url" not in config["redis"]
    assert "api_key" not in config["llm"]
    # Only what the spec sets: the image keeps its own defaults (and an image of another release
    # never meets a setting it does not know: the runtime refuses unknown keys).
    assert sorted(config) == ["database", "llm", "observability", "redis"]
    assert sorted(config["redis"]) == ["queue_prefix"]
    path = tmp_path / "config.yaml"
    path.write_text(text)
    monkeypatch.setenv(CONFIG_FILE_ENV, str(path))
    loaded = RuntimeConfig()
    assert loaded.llm.model == "gpt-x"
    assert loaded.llm.base_url == "http://llm:8000/v1"
    assert loaded.observability.log_level == "DEBUG"
    assert loaded.database.primary.max_size == 20


def test_operator_environment_never_leaks_into_the_workers_config(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FALACHEFE_LLM__MODEL", "leaked")
    monkeypatch.setenv(CONFIG_FILE_ENV, "/nonexistent")
    text = by_key(desired_objects(resource()))["ConfigMap/shop-config"]["data"]["config.yaml"]
    assert yaml.safe_load(text)["llm"]["model"] == "gpt-x"


def test_config_change_rolls_pods_and_image_change_does_not_touch_the_config() -> None:
    def hashes(r: Resource) -> set[str]:
        return {
            o["spec"]["template"]["metadata"]["annotations"][naming.CONFIG_HASH_ANNOTATION]
            for o in desired_objects(r)
            if o["kind"] == "Deployment"
        }

    base = hashes(resource())
    assert len(base) == 1
    assert hashes(resource(image="falachefe:1.3")) == base
    assert hashes(resource(logLevel="WARNING")) != base


def test_a_deployment_keeps_its_config_hash_while_its_config_is_the_desired_one() -> None:
    """No roll for a new hash formula: only a changed config rolls (``builders.kept_config_hashes``)."""
    current = resource()
    digest = builders.config_digest(builders.runtime_config_yaml(current))
    crew = WorkerKind.CREW

    def kept(live: dict[str, str | None], *, reconciled: bool = False) -> dict[WorkerKind, str]:
        return builders.kept_config_hashes(current, {crew: live}, reconciled_by_earlier_operator=reconciled)

    # Made for this config: its hash stays, whatever it is.
    assert kept({"configDigest": digest, "configHash": "older-formula"}) == {crew: "older-formula"}
    # Made for another config: the desired hash, the pods roll.
    assert kept({"configDigest": "0" * 16, "configHash": "older-formula"}) == {}
    # Made by an operator before digests: kept only if it reconciled this generation.
    assert kept({"configDigest": None, "configHash": "legacy"}, reconciled=True) == {crew: "legacy"}
    assert kept({"configDigest": None, "configHash": "legacy"}, reconciled=False) == {}

    adopted = dataclasses.replace(current, config_hashes={crew: "legacy"})
    deployments = by_key(desired_objects(adopted))
    template = deployments["Deployment/shop-crew"]["spec"]["template"]["metadata"]["annotations"]
    assert template[naming.CONFIG_HASH_ANNOTATION] == "legacy"
    assert deployments["Deployment/shop-crew"]["metadata"]["annotations"][naming.CONFIG_DIGEST_ANNOTATION] == digest
    auth = deployments["Deployment/shop-auth"]["spec"]["template"]["metadata"]["annotations"]
    assert auth[naming.CONFIG_HASH_ANNOTATION] == digest


def test_same_spec_same_manifests() -> None:
    assert desired_objects(resource()) == desired_objects(resource())


def test_disruption_budget_never_blocks_a_drain_of_a_small_pool() -> None:
    pdb = by_key(desired_objects(resource()))["PodDisruptionBudget/shop-crew"]
    assert pdb["spec"]["maxUnavailable"] == 1
    assert "minAvailable" not in pdb["spec"]
    assert pdb["spec"]["selector"]["matchLabels"] == naming.pool_selector("shop", builders.WorkerKind.CREW)


def test_metrics_service_selects_every_pool() -> None:
    service = by_key(desired_objects(resource()))["Service/shop-metrics"]
    assert service["spec"]["clusterIP"] == "None"
    assert service["spec"]["selector"] == naming.instance_selector("shop")
    assert service["spec"]["ports"][0]["port"] == 9102
    for obj in desired_objects(resource()):
        if obj["kind"] == "Deployment":
            labels = obj["spec"]["template"]["metadata"]["labels"]
            assert service["spec"]["selector"].items() <= labels.items()


def test_scheduling_passes_through_and_spread_defaults_to_the_pool() -> None:
    spread = {"maxSkew": 1, "topologyKey": "topology.kubernetes.io/zone", "whenUnsatisfiable": "ScheduleAnyway"}
    affinity = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": []}}}
    r = resource(
        pools={
            "auth": {
                "nodeSelector": {"pool": "workers"},
                "tolerations": [
                    {"key": "dedicated", "operator": "Equal", "value": "falachefe", "effect": "NoSchedule"}
                ],
                "affinity": affinity,
                "topologySpreadConstraints": [spread],
                "podAnnotations": {"example.com/team": "chat"},
                "env": [{"name": "TZ", "value": "UTC"}],
            }
        },
        llm=None,
    )
    pod = by_key(desired_objects(r))["Deployment/shop-auth"]["spec"]["template"]
    assert pod["spec"]["nodeSelector"] == {"pool": "workers"}
    assert pod["spec"]["tolerations"] == [
        {"key": "dedicated", "operator": "Equal", "value": "falachefe", "effect": "NoSchedule"}
    ]
    assert pod["spec"]["affinity"] == affinity
    (constraint,) = pod["spec"]["topologySpreadConstraints"]
    assert constraint == {
        **spread,
        "labelSelector": {"matchLabels": naming.pool_selector("shop", builders.WorkerKind.AUTH)},
    }
    assert pod["metadata"]["annotations"]["example.com/team"] == "chat"
    assert env(by_key(desired_objects(r))["Deployment/shop-auth"])["TZ"] == "UTC"


def test_secret_refs_name_the_spec_field() -> None:
    fields = [field for field, _ in builders.secret_refs(resource().spec)]
    assert fields == [
        "spec.database.secretRef",
        "spec.database.replicaSecretRef",
        "spec.redis.secretRef",
        "spec.llm.apiKeySecretRef",
        "spec.auth.otpSecretRef",
    ]


def test_migration_manifests() -> None:
    """Before the first migration only its Job (and the config it reads); the Job is as locked down as a worker."""
    fresh = Resource("shop", "team-a", UID, resource().spec)
    objects = by_key(desired_objects(fresh))
    [job_key] = [key for key in objects if key.startswith("Job/")]
    assert set(objects) == {"ConfigMap/shop-config", "Service/shop-metrics", job_key}
    job = objects[job_key]
    assert job["metadata"]["annotations"][naming.IMAGE_ANNOTATION] == "falachefe:1.2"
    assert len(job["metadata"]["name"]) <= 63
    pod = job["spec"]["template"]["spec"]
    (migrate,) = pod["containers"]
    assert migrate["image"] == "falachefe:1.2"
    assert migrate["command"][:2] == ["falachefe-runtime", "migrate"]
    assert migrate["terminationMessagePolicy"] == "FallbackToLogsOnError"
    assert migrate["securityContext"]["readOnlyRootFilesystem"] is True
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["restartPolicy"] == "Never"
    # Only the database's Secret: the migration needs nothing else.
    (secrets,) = [v for v in pod["volumes"] if v["name"] == "secrets"]
    assert [s["secret"]["name"] for s in secrets["projected"]["sources"]] == ["db"]
    # The pod is no worker: the metrics Service does not select it.
    assert not naming.instance_selector("shop").items() <= job["spec"]["template"]["metadata"]["labels"].items()
    # A new image is a new Job (its template cannot change); the workers keep theirs until told.
    upgraded = Resource("shop", "team-a", UID, resource(image="falachefe:1.3").spec, worker_image="falachefe:1.2")
    names = {o["metadata"]["name"] for o in desired_objects(upgraded) if o["kind"] == "Job"}
    assert names and job["metadata"]["name"] not in names
    assert {container(o)["image"] for o in desired_objects(upgraded) if o["kind"] == "Deployment"} == {"falachefe:1.2"}
    # Migrations off: no Job.
    off = resource(migrations={"enabled": False})
    assert not [o for o in desired_objects(off) if o["kind"] == "Job"]


def test_migration_job_names_fit_a_label_for_the_longest_resource_name() -> None:
    longest = "a" * naming.MAX_NAME_LENGTH
    name = naming.migration_job_name(longest, "0123456789abcdef")
    assert len(name) <= 63 and name.startswith(f"{longest}-migrate-")


def test_a_pools_job_timeout_reaches_its_workers_only_when_it_is_not_the_runtimes_default() -> None:
    """An older image refuses settings it does not know: a default pool sends none it could not."""
    timeout = env_name("worker.job_timeout_s")
    objects = by_key(desired_objects(resource()))
    assert timeout not in env(objects["Deployment/shop-auth"])  # the default, 20 s
    assert env(objects["Deployment/shop-crew"])[timeout] == "80"  # the spec's own
