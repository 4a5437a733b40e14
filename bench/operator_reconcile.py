"""Operator reconcile: time from creating a Falachefe to all its objects present, API requests, memory.

    .venv/bin/python -m bench.operator_reconcile            # --resources 200 --singles 5

Starts its own control plane (falachefe_devstack), then the operator
(``falachefe-operator``, the console script, as a process) watching one
namespace, talking to the API server through a counting proxy in this
process, so every request it makes (Kopf's lists and watches, its applies,
status writes, Events) is counted by method and resource.

Measured:

- one resource at a time (``--singles`` of them): seconds from the create
  request to all six owned objects present (ConfigMap, Service, two
  Deployments, two PodDisruptionBudgets), and the operator's requests until
  it goes quiet (apply, status, Event);
- ``--resources`` created at once: seconds until all their objects are
  present and until every status shows the generation, requests per
  resource, and the operator's RSS after them, against its RSS idle;
- the baseline, in the same run: the same objects server-side applied
  directly by this process (the minimum any controller must send: one
  request per object), timed the same way.

The pools have autoscaling off: this measures reconciling, not polling
queues (the autoscaler's cost is per poll, see bench/autoscale_sim.py).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import ssl
import statistics
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from falachefe_devstack import toolchain
from falachefe_devstack.kube import ControlPlane
from falachefe_devstack.process import ManagedProcess, free_port, http_ok
from falachefe_operator import builders, crd
from falachefe_operator.builders import Resource
from falachefe_operator.credentials import load_credentials
from falachefe_operator.kubeapi import KubeApi
from falachefe_operator.naming import FIELD_MANAGER
from falachefe_operator.resource import API_VERSION, GROUP, KIND, PLURAL, VERSION
from falachefe_operator.spec import FalachefeSpec

REPO = Path(__file__).resolve().parents[1]
OPERATOR = Path(sys.executable).parent / "falachefe-operator"
NAMESPACE = "bench"
DIRECT_NAMESPACE = "bench-direct"
OBJECTS_PER_RESOURCE = 6  # ConfigMap, Service, 2 Deployments, 2 PDBs

SPEC: dict[str, Any] = {
    "image": "falachefe:bench",
    "database": {"secretRef": {"name": "bench-db"}},
    "redis": {"secretRef": {"name": "bench-redis"}},
    "llm": {"model": "bench"},
    "auth": {"otpSecretRef": {"name": "bench-otp"}},
    "pools": {
        "auth": {"minReplicas": 1, "maxReplicas": 3, "autoscaling": {"enabled": False}},
        "crew": {"minReplicas": 0, "maxReplicas": 3, "autoscaling": {"enabled": False}},
    },
    # No kubelet runs a migration Job here (with migrations on, the workers wait for it forever).
    "migrations": {"enabled": False},
}


# -- the counting proxy -------------------------------------------------------------


@dataclass
class CountingProxy:
    """Plain HTTP in, the API server's HTTPS out; counts every request by method and resource."""

    upstream: str
    ca_file: Path
    counts: Counter[tuple[str, str]] = field(default_factory=Counter)
    last_request: float = 0.0
    port: int = field(default_factory=free_port)

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=_ssl(self.ca_file), limit=0),
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=10),
            auto_decompress=False,
        )
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._forward)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        await self._runner.cleanup()
        await self._session.close()

    def total(self, *, watches: bool = False) -> int:
        return sum(n for (method, what), n in self.counts.items() if watches or method != "WATCH")

    async def _forward(self, request: web.Request) -> web.StreamResponse:
        watch = request.query.get("watch") in ("true", "1")
        self.counts[("WATCH" if watch else request.method, _resource_of(request.path))] += 1
        self.last_request = time.monotonic()
        headers = {
            name: value
            for name, value in request.headers.items()
            if name.lower() in ("authorization", "content-type", "accept", "user-agent")
        }
        body = await request.read()
        async with self._session.request(
            request.method, self.upstream + str(request.rel_url), headers=headers, data=body or None
        ) as upstream:
            response = web.StreamResponse(status=upstream.status, reason=upstream.reason)
            for name in ("Content-Type", "Content-Encoding"):
                if name in upstream.headers:
                    response.headers[name] = upstream.headers[name]
            await response.prepare(request)
            # A watch ends when either side hangs up (the operator stopping, say).
            with contextlib.suppress(ConnectionResetError, aiohttp.ClientError):
                async for chunk in upstream.content.iter_any():
                    await response.write(chunk)
                await response.write_eof()
            return response


def _resource_of(path: str) -> str:
    """/apis/apps/v1/namespaces/x/deployments/y/scale -> deployments/scale"""
    parts = [part for part in path.split("/") if part]
    if "namespaces" in parts and len(parts) > parts.index("namespaces") + 2:
        rest = parts[parts.index("namespaces") + 2 :]
    else:
        rest = parts[3:] if parts[:1] == ["apis"] else parts[2:]
    if not rest:
        return "discovery"
    return rest[0] + (f"/{rest[2]}" if len(rest) > 2 else "")


def _ssl(ca_file: Path) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(ca_file))


# -- the run --------------------------------------------------------------------------


@dataclass
class Run:
    plane: ControlPlane
    workdir: Path
    api: KubeApi
    proxy: CountingProxy
    operator: ManagedProcess | None = None
    operator_pid: int = 0

    def falachefe(self, namespace: str, name: str) -> dict[str, Any]:
        return {
            "apiVersion": API_VERSION,
            "kind": KIND,
            "metadata": {"name": name, "namespace": namespace},
            "spec": SPEC,
        }

    async def create(self, namespace: str, name: str) -> dict[str, Any]:
        path = f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/{PLURAL}"
        return (await self.api.request("POST", path, body=self.falachefe(namespace, name)))[1]

    async def owned_count(self, namespace: str, prefix: str) -> int:
        total = 0
        for path in (
            f"/api/v1/namespaces/{namespace}/configmaps",
            f"/api/v1/namespaces/{namespace}/services",
            f"/apis/apps/v1/namespaces/{namespace}/deployments",
            f"/apis/policy/v1/namespaces/{namespace}/poddisruptionbudgets",
        ):
            listed = (await self.api.request("GET", path))[1]
            total += sum(1 for item in listed["items"] if item["metadata"]["name"].startswith(prefix))
        return total

    async def observed(self, namespace: str, prefix: str) -> int:
        listed = (await self.api.request("GET", f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/{PLURAL}"))[1]
        return sum(
            1
            for item in listed["items"]
            if item["metadata"]["name"].startswith(prefix)
            and (item.get("status") or {}).get("observedGeneration") == item["metadata"]["generation"]
        )

    async def quiet(self, seconds: float = 1.5, timeout: float = 120) -> None:
        """Until the operator has sent nothing (watches aside) for ``seconds``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if time.monotonic() - self.proxy.last_request >= seconds:
                return
            await asyncio.sleep(0.1)
        raise TimeoutError("the operator never went quiet")

    def rss_mib(self) -> float:
        for line in Path(f"/proc/{self.operator_pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        raise RuntimeError("no VmRSS")


async def wait_until(probe: Any, target: int, timeout: float, interval: float) -> float:
    deadline = time.monotonic() + timeout
    while True:
        if await probe() >= target:
            return time.monotonic()
        if time.monotonic() > deadline:
            raise TimeoutError(f"{probe} did not reach {target}")
        await asyncio.sleep(interval)


async def direct_apply(run: Run, names: list[str]) -> float:
    """The baseline: this process applies the same objects itself, one request per object."""
    created = await asyncio.gather(*(run.create(DIRECT_NAMESPACE, name) for name in names))
    spec = FalachefeSpec.model_validate(SPEC)
    manifests = [
        manifest
        for body in created
        for manifest in builders.desired_objects(
            Resource(body["metadata"]["name"], DIRECT_NAMESPACE, body["metadata"]["uid"], spec)
        )
    ]
    started = time.monotonic()
    await asyncio.gather(*(run.api.apply(builders.ref_of(m).path, m, manager=FIELD_MANAGER) for m in manifests))
    return time.monotonic() - started


async def bench(resources: int, singles: int) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="falachefe-bench-"))
    plane = ControlPlane(workdir / "kube", toolchain.ensure_all()).start()
    admin = KubeApi(load_credentials(str(plane.kubeconfig)))
    proxy = CountingProxy(plane.server, plane.ca_file)
    await proxy.start()
    run = Run(plane, workdir, admin, proxy)
    try:
        return await _measure(run, resources, singles)
    finally:
        if run.operator is not None:
            run.operator.stop()
        await proxy.stop()
        await admin.close()
        plane.stop()


async def _measure(run: Run, resources: int, singles: int) -> dict[str, Any]:
    plane, api = run.plane, run.api
    crd_manifest = crd.definition()
    await api.apply(
        f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{crd.CRD_NAME}", crd_manifest, manager="bench"
    )
    for namespace in (NAMESPACE, DIRECT_NAMESPACE):
        await api.request("POST", "/api/v1/namespaces", body={"metadata": {"name": namespace}})
        for secret, key in (("bench-db", "dsn"), ("bench-redis", "url"), ("bench-otp", "otpSecret")):
            await api.request(
                "POST",
                f"/api/v1/namespaces/{namespace}/secrets",
                body={"metadata": {"name": secret}, "stringData": {key: "unused://"}},
            )
    await asyncio.sleep(2)  # the CRD established and served

    # Baseline: direct server-side apply.
    direct_one = statistics.median([await direct_apply(run, [f"direct-one-{i}"]) for i in range(singles)])
    direct_many = await direct_apply(run, [f"direct-many-{i}" for i in range(resources)])

    # The operator, through the counting proxy.
    kubeconfig = run.workdir / "operator.kubeconfig"
    kubeconfig.write_text(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "proxy", "cluster": {"server": f"http://127.0.0.1:{run.proxy.port}"}}],
                "users": [{"name": "admin", "user": {"token": plane.admin_token}}],
                "contexts": [{"name": "proxy", "context": {"cluster": "proxy", "user": "admin"}}],
                "current-context": "proxy",
            }
        )
    )
    liveness = free_port()
    argv = [
        str(OPERATOR),
        f"--namespace={NAMESPACE}",
        "--standalone",
        f"--liveness-port={liveness}",
        f"--metrics-port={free_port()}",
    ]
    run.operator = ManagedProcess(
        "falachefe-operator", argv, run.workdir / "operator.log", env={"KUBECONFIG": str(kubeconfig)}
    ).start()
    run.operator.wait_until(lambda: http_ok(f"http://127.0.0.1:{liveness}/healthz"), 120, "healthz")
    assert run.operator.popen is not None
    run.operator_pid = run.operator.popen.pid
    await run.quiet(2.0)
    startup_requests = dict(run.proxy.counts)
    rss_idle = run.rss_mib()

    # One at a time.
    one_seconds, one_requests = [], []
    for i in range(singles):
        before = run.proxy.total()
        started = time.monotonic()
        await run.create(NAMESPACE, f"one-{i}")
        done = await wait_until(lambda i=i: run.owned_count(NAMESPACE, f"one-{i}-"), OBJECTS_PER_RESOURCE, 60, 0.02)
        one_seconds.append(done - started)
        await run.quiet()
        one_requests.append(run.proxy.total() - before)
    single_breakdown = Counter(run.proxy.counts)

    # Many at once.
    before_counts = Counter(run.proxy.counts)
    started = time.monotonic()
    await asyncio.gather(*(run.create(NAMESPACE, f"many-{i}") for i in range(resources)))
    created = time.monotonic()
    objects_done = await wait_until(
        lambda: run.owned_count(NAMESPACE, "many-"), resources * OBJECTS_PER_RESOURCE, 600, 0.25
    )
    status_done = await wait_until(lambda: run.observed(NAMESPACE, "many-"), resources, 600, 0.25)
    await run.quiet(3.0, timeout=600)
    many_counts = Counter(run.proxy.counts)
    many_counts.subtract(before_counts)
    rss_after = run.rss_mib()

    return {
        "resources": resources,
        "singles": singles,
        "direct_apply_one_s": direct_one,
        "direct_apply_many_s": direct_many,
        "one_seconds": one_seconds,
        "one_requests": one_requests,
        "many_create_s": created - started,
        "many_objects_s": objects_done - started,
        "many_status_s": status_done - started,
        "many_requests": {f"{m} {r}": n for (m, r), n in sorted(many_counts.items()) if n},
        "startup_requests": {f"{m} {r}": n for (m, r), n in sorted(startup_requests.items())},
        "single_breakdown": {f"{m} {r}": n for (m, r), n in sorted(single_breakdown.items()) if n},
        "rss_idle_mib": rss_idle,
        "rss_after_mib": rss_after,
    }


def report(result: dict[str, Any]) -> str:
    n = result["resources"]
    one_s = statistics.median(result["one_seconds"])
    one_req = statistics.median(result["one_requests"])
    many_req = sum(v for k, v in result["many_requests"].items() if not k.startswith("WATCH"))
    minimum = OBJECTS_PER_RESOURCE + 1  # every object once, and the status once
    lines = [
        f"operator reconcile, {OBJECTS_PER_RESOURCE} objects per Falachefe (2 pools), autoscaling off",
        "",
        f"{'':34}{'operator':>12}{'baseline':>12}{'ratio':>8}",
        f"{'1 resource: create -> objects':34}{one_s:>11.3f}s{result['direct_apply_one_s']:>11.3f}s"
        f"{one_s / result['direct_apply_one_s']:>7.1f}x",
        f"{f'{n} resources: create -> objects':34}{result['many_objects_s']:>11.2f}s"
        f"{result['direct_apply_many_s']:>11.2f}s{result['many_objects_s'] / result['direct_apply_many_s']:>7.1f}x",
        f"{f'{n} resources: create -> status':34}{result['many_status_s']:>11.2f}s",
        f"{'API requests per reconcile (1)':34}{one_req:>12.0f}{minimum:>12}{one_req / minimum:>7.1f}x",
        f"{f'API requests per reconcile ({n})':34}{many_req / n:>12.1f}{minimum:>12}{many_req / n / minimum:>7.1f}x",
        f"{f'operator RSS after {n} (MiB)':34}{result['rss_after_mib']:>12.1f}{result['rss_idle_mib']:>12.1f}"
        f"{result['rss_after_mib'] / result['rss_idle_mib']:>7.2f}x",
        "",
        "baseline: this process server-side applying the same objects itself (one request each);",
        "minimum requests: one per object plus one status write; RSS baseline: the operator idle.",
        f"requests for the {n} (method resource: count): "
        + ", ".join(f"{k}: {v}" for k, v in result["many_requests"].items()),
    ]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--resources", type=int, default=200)
    parser.add_argument("--singles", type=int, default=5)
    parser.add_argument("--json", type=Path, default=REPO / "bench" / "out" / "operator_reconcile.json")
    args = parser.parse_args()
    os.environ.setdefault("PYTHONPATH", str(REPO / "scripts"))
    result = asyncio.run(bench(args.resources, args.singles))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2))
    print(report(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
