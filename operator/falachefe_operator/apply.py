"""Converging a resource's owned objects on the desired ones: check, apply, prune.

Everything is written with server-side apply under one field manager, with
``force``: the operator owns the fields it sets and takes them back from
whoever changed them (that is the drift correction). Fields it does not set
(a Deployment's ``replicas``, annotations other tools add) stay theirs.

Replicas: the applied Deployment never names ``spec.replicas``, so the
autoscaler's writes through the scale subresource are never undone. A new
Deployment is sized to its pool's minimum before it runs anything (see
``_apply_new_deployment``); a pool without autoscaling is kept within
``minReplicas..maxReplicas`` here (inside the bounds, a person's ``kubectl
scale`` stands).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import functools
import hashlib
import json
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from falachefe_runtime.redact import url_problem

from . import builders, naming
from .builders import ObjectRef, Resource
from .kubeapi import ApiError, Applied, KubeApi
from .spec import FalachefeSpec
from .status import Problem


def fingerprint(body: Mapping[str, Any]) -> str:
    """A digest of the fields the operator owns in ``body`` (its Apply entry in managedFields).

    Someone else's update of a field the operator set moves that field out
    of the operator's entry, so a changed digest means drift; status
    updates, scale changes and other managers' fields leave it alone.
    """
    for entry in (body.get("metadata") or {}).get("managedFields") or []:
        if (
            entry.get("manager") == naming.FIELD_MANAGER
            and entry.get("operation") == "Apply"
            and not entry.get("subresource")
        ):
            return hashlib.sha256(json.dumps(entry.get("fieldsV1"), sort_keys=True).encode()).hexdigest()
    return ""


# -- secrets ---------------------------------------------------------------------


@dataclass(frozen=True)
class SecretsCheck:
    problems: list[Problem]
    #: The pools' Redis URL, which the autoscaler needs to read queue depth.
    redis_url: str | None = field(repr=False)


class SecretReads:
    """Reads of Secrets shared by every resource: one request per Secret per ``ttl_seconds``, not per resource.

    Resources of one namespace often reference the same Secrets (one
    database, one Redis), and an operator start reconciles them all at
    once: each used to read every Secret it references, three requests a
    resource. Here a read of a Secret that another resource read less than
    ``ttl_seconds`` ago (or is reading now) takes that answer. Only an
    existing Secret's answer is kept (a missing or unreadable one is asked
    again by the next check), so a change to a Secret shows at most
    ``ttl_seconds`` later; the default is no longer than a controller's
    first retry after a problem (``controller.RETRY_SECONDS``).
    """

    def __init__(self, api: KubeApi, *, ttl_seconds: float = 2.0, clock: Callable[[], float] = time.monotonic) -> None:
        self._api = api
        self._ttl = ttl_seconds
        self._clock = clock
        self._reads: dict[tuple[str, str, str | None], tuple[float, asyncio.Future[_Read]]] = {}

    async def read(self, namespace: str, name: str, redis_key: str | None) -> _Read:
        """What ``_read_secret`` says of the Secret, from the last read if it is recent (or still running)."""
        key = (namespace, name, redis_key)
        now = self._clock()
        held = self._reads.get(key)
        if held is None or (held[1].done() and now - held[0] >= self._ttl):
            if len(self._reads) >= 1024:
                self._reads = {k: v for k, v in self._reads.items() if not v[1].done() or now - v[0] < self._ttl}
            held = (now, asyncio.ensure_future(_read_secret(self._api, namespace, name, redis_key)))
            self._reads[key] = held
            held[1].add_done_callback(functools.partial(self._settled, key))
        # Shielded: one reader cancelled (its resource deleted) cancels no one else's read.
        return await asyncio.shield(held[1])

    def _settled(self, key: tuple[str, str, str | None], read: asyncio.Future[_Read]) -> None:
        kept = not read.cancelled() and read.exception() is None and isinstance(read.result(), _Found)
        if not kept and self._reads.get(key, (0.0, None))[1] is read:
            del self._reads[key]


async def check_secrets(secrets: SecretReads, namespace: str, spec: FalachefeSpec) -> SecretsCheck:
    """Whether every Secret the workers reference exists (a pod cannot start without it), and the Redis URL.

    The Redis URL is the one secret value the operator needs. The API has no
    read of a single key, so the Secret holding it is read whole, its URL key
    decoded and kept, the rest dropped at once (keep the URL in a Secret of
    its own). Of every other Secret only its existence is asked
    (``KubeApi.exists``): the API server never sends its data, so a key
    missing from it shows when its pods fail to start, not here.
    """
    redis_ref = spec.redis.secret_ref
    refs = builders.secret_refs(spec)
    names = sorted({ref.name for _, ref in refs})
    fetched = await asyncio.gather(
        *(secrets.read(namespace, name, redis_ref.key if name == redis_ref.name else None) for name in names)
    )
    by_name = dict(zip(names, fetched, strict=True))
    problems = []
    for field_path, ref in refs:
        secret = by_name[ref.name]
        if isinstance(secret, _Unreadable):
            problems.append(
                Problem("SecretUnreadable", f"Secret {namespace}/{ref.name} ({field_path}): {secret.reason}")
            )
        elif secret is None:
            problems.append(Problem("SecretNotFound", f"Secret {namespace}/{ref.name} not found ({field_path}.name)"))
        elif secret.keys is not None and ref.key not in secret.keys:
            problems.append(
                Problem(
                    "SecretKeyNotFound",
                    f"Secret {namespace}/{ref.name} has no key {ref.key!r} ({field_path}.key)",
                )
            )
    redis_secret = by_name[redis_ref.name]
    redis_url = redis_secret.redis_url if isinstance(redis_secret, _Found) else None
    if redis_url is not None and (problem := url_problem(redis_url)):
        # Neither the autoscaler nor the workers could use it: say so now, naming the key and not the value.
        where = f"Secret {namespace}/{redis_ref.name} key {redis_ref.key!r} (spec.redis.secretRef)"
        problems.append(Problem("SecretInvalid", f"{where}: the Redis URL {problem}"))
        redis_url = None
    return SecretsCheck(problems, redis_url)


@dataclass(frozen=True)
class _Found:
    """A Secret that exists; for the Redis URL's Secret, its data keys and the URL (the only value kept)."""

    keys: frozenset[str] | None = None
    redis_url: str | None = field(default=None, repr=False)


@dataclass(frozen=True)
class _Unreadable:
    reason: str


_Read = _Found | _Unreadable | None


async def _read_secret(api: KubeApi, namespace: str, name: str, redis_key: str | None) -> _Found | _Unreadable | None:
    """Whether the Secret exists (None if not), or why it could not be read; its data only for ``redis_key``."""
    path = f"/api/v1/namespaces/{namespace}/secrets/{name}"
    try:
        if redis_key is None:
            return _Found() if await api.exists(path) else None
        secret = await api.get(path)
    except ApiError as error:
        return _Unreadable(f"{error.status} {error.reason}: {error.message}")
    except (aiohttp.ClientError, TimeoutError) as error:
        return _Unreadable(f"API server unreachable: {type(error).__name__}")
    if secret is None:
        return None
    data = secret.get("data") or {}
    return _Found(keys=frozenset(data), redis_url=_decode(data.get(redis_key)))


def _decode(value: str | None) -> str | None:
    if value is None:
        return None
    try:
        return base64.b64decode(value).decode()
    except (binascii.Error, UnicodeDecodeError):
        return None


# -- apply and prune ---------------------------------------------------------------


@dataclass
class ApplyResult:
    #: Objects the API server refused or could not take, in words for the status.
    problems: list[Problem] = field(default_factory=list)
    #: Every object applied, as stored.
    applied: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    created: list[ObjectRef] = field(default_factory=list)
    pruned: list[ObjectRef] = field(default_factory=list)


async def converge(
    api: KubeApi,
    resource: Resource,
    owned: Iterable[ObjectRef],
    established: Iterable[tuple[str, str]],
    *,
    first_visit: bool,
) -> ApplyResult:
    """Apply every desired object, set the replicas apply leaves alone, delete what is no longer desired.

    ``owned`` is what the operator has seen of this resource's objects (from
    its watches); any of them not desired any more (a removed pool's) is
    deleted. ``established`` are the Deployments seen running (not still
    paused from their creation); the others are created as new ones are.
    ``first_visit``: no operator has reported on this resource yet, so it
    owns no running Deployment.
    """
    owned = list(owned)
    known = set(established)
    manifests = builders.desired_objects(resource)
    refs = [builders.ref_of(manifest) for manifest in manifests]
    result = ApplyResult()
    outcomes = await asyncio.gather(
        *(
            _apply_new_deployment(api, resource, manifest, ref, surely_new=first_visit)
            if ref.kind == "Deployment" and ref.key not in known
            else api.apply(ref.path, manifest, manager=naming.FIELD_MANAGER)
            for ref, manifest in zip(refs, manifests, strict=True)
        ),
        return_exceptions=True,
    )
    for ref, outcome in zip(refs, outcomes, strict=True):
        if isinstance(outcome, BaseException):
            result.problems.append(_problem(f"{ref.kind} {ref.name}", outcome))
            continue
        result.applied[ref.key] = outcome.body
        if outcome.created:
            result.created.append(ref)

    await _keep_within_bounds(api, resource, result)

    desired = {ref.key for ref in refs}
    stale = [ref for ref in owned if ref.key not in desired]
    deletions = await asyncio.gather(*(api.delete(ref.path) for ref in stale), return_exceptions=True)
    for ref, deleted in zip(stale, deletions, strict=True):
        if isinstance(deleted, BaseException):
            result.problems.append(_problem(f"deleting {ref.kind} {ref.name}", deleted))
        elif deleted:
            result.pruned.append(ref)
    return result


#: A Deployment's ``spec.replicas`` when its creator names none.
API_DEFAULT_REPLICAS = 1


async def _apply_new_deployment(
    api: KubeApi, resource: Resource, manifest: Mapping[str, Any], ref: ObjectRef, *, surely_new: bool
) -> Applied:
    """Create a Deployment at its pool's minimum without ever running the API's default of one replica.

    It is created paused (the Deployment controller makes no ReplicaSet for
    a new paused Deployment), scaled to ``minReplicas`` through the scale
    subresource, then applied as usual, which unpauses it (a surely new one
    whose minimum is the API's default is simply created: the pause would
    cost a second apply for the same result). The watches may
    not have shown an existing Deployment yet (just after the operator
    starts), so unless the resource is ``surely_new``, one GET decides: an
    existing one is applied as usual, unless it is an earlier creation
    interrupted before its first scale, which is finished now.
    """
    kind = naming.pool_of(manifest["metadata"]["labels"])
    pool = dict(resource.spec.pools.items())[kind] if kind is not None else None
    if surely_new and pool is not None and pool.min_replicas == API_DEFAULT_REPLICAS:
        # The API's default is the pool's minimum: created as it is, nothing to hold back.
        return await api.apply(ref.path, manifest, manager=naming.FIELD_MANAGER)
    if not surely_new:
        existing = await api.get(ref.path)
        if existing is not None and not still_unborn(existing):
            return await api.apply(ref.path, manifest, manager=naming.FIELD_MANAGER)
    paused = {**manifest, "spec": {**manifest["spec"], "paused": True}}
    first = await api.apply(ref.path, paused, manager=naming.FIELD_MANAGER)
    if first.created or still_unborn(first.body):
        current = int((first.body.get("spec") or {}).get("replicas", API_DEFAULT_REPLICAS))
        if pool is not None and pool.min_replicas != current:
            await _scale(api, ref, pool.min_replicas)
    final = await api.apply(ref.path, manifest, manager=naming.FIELD_MANAGER)
    return Applied(body=final.body, created=first.created)


async def _keep_within_bounds(api: KubeApi, resource: Resource, result: ApplyResult) -> None:
    """A pool without autoscaling stays within minReplicas..maxReplicas (inside, a person decides)."""
    for kind, pool in resource.spec.pools.items():
        if pool.autoscaling.enabled:
            continue
        name = naming.deployment_name(resource.name, kind)
        body = result.applied.get(("Deployment", name))
        if body is None:
            continue
        current = int((body.get("spec") or {}).get("replicas", 1))
        wanted = min(max(current, pool.min_replicas), pool.max_replicas)
        if wanted == current:
            continue
        try:
            await _scale(api, builders.ref_of(body), wanted)
        except (ApiError, aiohttp.ClientError, TimeoutError) as error:
            result.problems.append(_problem(f"scaling Deployment {name} to {wanted}", error))
        else:
            body.setdefault("spec", {})["replicas"] = wanted


async def _scale(api: KubeApi, ref: ObjectRef, replicas: int) -> None:
    await api.merge_patch(f"{ref.path}/scale", {"spec": {"replicas": replicas}}, manager=naming.FIELD_MANAGER)


def still_unborn(deployment: Mapping[str, Any]) -> bool:
    """Created paused by this operator and never scaled or unpaused since (an interrupted creation).

    Scaling or unpausing a Deployment changes its spec, so its generation
    is 1 only until either happens.
    """
    return (
        bool((deployment.get("spec") or {}).get("paused")) and (deployment.get("metadata") or {}).get("generation") == 1
    )


def _problem(what: str, error: BaseException) -> Problem:
    if isinstance(error, ApiError):
        if error.status == 403:
            return Problem("Forbidden", f"{what}: {error.message} (check the operator's RBAC)")
        return Problem("ApplyFailed", f"{what}: {error.message}")
    if isinstance(error, aiohttp.ClientError | TimeoutError):
        return Problem("ApiUnavailable", f"{what}: API server unreachable ({type(error).__name__})")
    raise error
