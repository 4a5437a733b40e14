"""Names, labels and selectors of the objects a ``Falachefe`` owns.

Everything here is derived from the resource's name and a pool's kind, so
the operator can find its objects again after a restart without having
stored anything.
"""

from __future__ import annotations

from falachefe_runtime.config import WorkerKind

from .resource import API_VERSION, KIND

FIELD_MANAGER = "falachefe-operator"
MANAGED_BY = "falachefe-operator"

NAME_LABEL = "app.kubernetes.io/name"
INSTANCE_LABEL = "app.kubernetes.io/instance"
COMPONENT_LABEL = "app.kubernetes.io/component"
PART_OF_LABEL = "app.kubernetes.io/part-of"
MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
POOL_LABEL = "falachefe.io/pool"

APP_NAME = "falachefe"
CONFIG_HASH_ANNOTATION = "falachefe.io/config-hash"
#: On a worker Deployment: the digest of the config its pods are made for (their hash may be an older one).
CONFIG_DIGEST_ANNOTATION = "falachefe.io/config-digest"
#: On a migration Job: the image it migrates the database for.
IMAGE_ANNOTATION = "falachefe.io/image"
CONFIG_KEY = "config.yaml"
CONFIG_DIR = "/etc/falachefe"

#: Owned objects are named ``<name>-<suffix>``; the longest suffix ("-metrics")
#: must still leave a valid DNS-1035 Service name (63 characters).
MAX_NAME_LENGTH = 50
NAME_PATTERN = r"^[a-z]([-a-z0-9]*[a-z0-9])?$"

#: The label selector the operator's watches use: only objects it manages.
MANAGED_SELECTOR = f"{MANAGED_BY_LABEL}={MANAGED_BY}"


def deployment_name(name: str, kind: WorkerKind) -> str:
    return f"{name}-{kind.value}"


def disruption_budget_name(name: str, kind: WorkerKind) -> str:
    return f"{name}-{kind.value}"


def config_map_name(name: str) -> str:
    return f"{name}-config"


def service_name(name: str) -> str:
    return f"{name}-metrics"


def migration_job_name(name: str, digest: str) -> str:
    """``<name>-migrate-<digest>``, the digest cut to keep within 63 characters (the Job's pod label)."""
    prefix = f"{name}-migrate-"
    return prefix + digest[: max(4, min(10, 63 - len(prefix)))]


def migration_labels(name: str) -> dict[str, str]:
    """A migration Job's pods: of the resource, but no worker (the metrics Service does not select them)."""
    return {
        NAME_LABEL: f"{APP_NAME}-migrate",
        INSTANCE_LABEL: name,
        PART_OF_LABEL: APP_NAME,
        COMPONENT_LABEL: "migration",
    }


def instance_selector(name: str) -> dict[str, str]:
    """Every worker pod of one resource (the metrics Service selects these)."""
    return {NAME_LABEL: APP_NAME, INSTANCE_LABEL: name}


def pool_selector(name: str, kind: WorkerKind) -> dict[str, str]:
    """The pods of one pool; a Deployment's selector, so it never changes."""
    return {**instance_selector(name), POOL_LABEL: kind.value}


def selector_string(selector: dict[str, str]) -> str:
    return ",".join(f"{key}={value}" for key, value in sorted(selector.items()))


def instance_labels(name: str) -> dict[str, str]:
    return {
        **instance_selector(name),
        PART_OF_LABEL: APP_NAME,
        MANAGED_BY_LABEL: MANAGED_BY,
    }


def pool_labels(name: str, kind: WorkerKind) -> dict[str, str]:
    return {**instance_labels(name), **pool_selector(name, kind), COMPONENT_LABEL: "worker"}


def owner_reference(name: str, uid: str) -> dict[str, object]:
    """Makes the resource the controller of an object: deleting it deletes the object."""
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "name": name,
        "uid": uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def pool_of(labels: dict[str, str] | None) -> WorkerKind | None:
    """The pool an owned object belongs to, from its labels (None for shared objects)."""
    value = (labels or {}).get(POOL_LABEL)
    try:
        return WorkerKind(value) if value else None
    except ValueError:
        return None
