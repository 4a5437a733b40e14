"""Operator at scale: N Falachefe resources, autoscaling on (its default), counted by the API server itself.

    .venv/bin/python -m bench operator_scale                  # 200 resources
    .venv/bin/python -m bench operator_scale --resources 1000

Starts its own control plane (etcd, kube-apiserver, kube-controller-manager:
``falachefe_devstack.kube``), a real Redis, and metrics.k8s.io served by
the stand-in behind a real APIService; creates ``--resources`` Falachefe
resources, two pools each (auth and crew, minReplicas 1), autoscaling on
the queue and CPU with the defaults (70% CPU, polled every 5 s); then runs
the operator (``falachefe-operator``, the console script, as its chart's
least-privilege identity) and plays the kubelet and metrics-server's part:
every pool's pods marked Running and Ready, each sampled at 50m of CPU.

Measured, against the goals of issue 13 (printed next to the figures):

1. cold start: the operator starts with every resource unreconciled;
   seconds until every status shows the generation, until every resource
   is Ready, and until every one has ScalingActive; the operator's API
   requests in that phase divided by the number of resources;
2. one idle minute: API requests per resource per minute beyond the
   watches (``apiserver_request_total``, by resource and verb), whether the
   pools were polled on time, the operator's CPU (``/proc/<pid>/stat``) and
   RSS, and Redis commands per resource per minute;
3. the same minute with every other core busy (one ``while True: pass``
   process per core but one).

Counting: ``apiserver_request_total`` has no user label, so the operator's
share is attributed by verb and resource. In the idle minutes nothing but
the operator touches the resources counted (the same set as
tests/operator/test_request_budget.py; the bench's kubelet stand-in has
stopped by then). In the cold phase the controller-manager and this
bench's kubelet stand-in are busy too: their requests are left out by verb
(the ReplicaSet controller creates pods, the Deployment and disruption
controllers PUT Deployments and PodDisruptionBudgets and their status,
the garbage collector GETs the owner of new objects;
this process LISTs pods and Falachefes and patches pods' status, and
subtracts exactly what it sent), and Events are counted as the Event
objects the operator reported. Reads of metrics.k8s.io are counted by the
stand-in that serves them: the aggregator does not label them.

Poll lag: the operator exports no lag of its own; each pool's polls in the
minute (its poll counter, ``falachefe_operator_pool_autoscale_polls_total``)
give its mean period, and lag is that period less the polling interval
(which includes the step's own time: the next poll is due an interval after
the previous one ended).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis
import urllib3
from kubernetes import client as k8s
from kubernetes import config as k8s_config
from prometheus_client.parser import text_string_to_metric_families

from falachefe_devstack import toolchain
from falachefe_devstack.apiserver_metrics import STREAMING_VERBS, difference, request_counts
from falachefe_devstack.kube import ControlPlane, kubectl
from falachefe_devstack.metrics_standin import MetricsServerStandIn, registered
from falachefe_devstack.operator_identity import bind_operator_identity
from falachefe_devstack.pods import list_pods, mark_ready
from falachefe_devstack.process import ManagedProcess, cpu_seconds, free_port, http_ok, program_path
from falachefe_devstack.redis import RedisServer
from falachefe_devstack.waiting import wait_for
from falachefe_operator import crd, naming
from falachefe_operator.resource import GROUP, KIND, PLURAL, VERSION
from falachefe_operator.status import LIVE_STATUS_SECONDS

REPO = Path(__file__).resolve().parents[1]
NAMESPACE = "bench-scale"
POLL_SECONDS = 5  # the default pollingIntervalSeconds
POD_CPU = "50m"  # below the 70% target of both pools' requests: idle, no scaling
FALACHEFES = f"{GROUP}/{PLURAL}"
#: What the operator reads or writes, as ``group/resource`` (see tests/operator/test_request_budget.py).
OPERATOR_RESOURCES = {
    "/pods",
    "/events",
    "/secrets",
    "/configmaps",
    "/services",
    "apps/deployments",
    "policy/poddisruptionbudgets",
    "batch/jobs",
    FALACHEFES,
}
#: Not counted in the idle minutes: the API server's own endpoint reconciler reads the ``kubernetes`` Service.
IDLE_EXCLUDED = {"/services"}
#: Requests of the controller-manager in the cold phase, by (verb, resource, subresource).
CONTROLLER_MANAGER = {
    ("POST", "/pods", ""),  # the ReplicaSet controller creates the pools' pods
    ("PUT", "apps/deployments", ""),  # the Deployment controller's revision annotation
    ("PUT", "apps/deployments", "status"),
    ("PUT", "policy/poddisruptionbudgets", "status"),  # the disruption controller
    ("GET", FALACHEFES, ""),  # the garbage collector looks up new objects' owner (the operator never GETs one)
}

GOALS = {
    "cold_seconds": 60.0,
    "requests_per_reconcile": 8.0,
    "requests_per_resource_minute": 1.0,
    "cpu_percent": 10.0,
    "rss_mib": 250.0,
    "poll_lag_p99_seconds": 1.0,
}


def falachefe(name: str) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": KIND,
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": {
            "image": "falachefe:bench",
            "database": {"secretRef": {"name": "bench-db"}},
            "redis": {"secretRef": {"name": "bench-redis"}},
            "llm": {"model": "bench"},
            "auth": {"otpSecretRef": {"name": "bench-otp"}},
            # Autoscaling left at its defaults: on, queue and 70% CPU, polled every 5 s.
            "pools": {"auth": {"minReplicas": 1, "maxReplicas": 4}, "crew": {"minReplicas": 1, "maxReplicas": 3}},
            # No kubelet runs a migration Job here.
            "migrations": {"enabled": False},
        },
    }


# -- the kubelet's and metrics-server's part -------------------------------------------


@dataclass
class KubeletStandIn:
    """Marks every pool's new pods Running and Ready and samples their CPU, in a thread, until stopped."""

    api: k8s.ApiClient
    metrics: MetricsServerStandIn
    interval: float
    lists: int = 0
    patches: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> KubeletStandIn:
        self._thread = threading.Thread(target=self._run, name="kubelet-standin", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _run(self) -> None:
        sampled: set[str] = set()
        while not self._stop.is_set():
            self.lists += 1
            try:
                pods = list_pods(self.api, NAMESPACE, {naming.MANAGED_BY_LABEL: naming.MANAGED_BY})
                self.patches += mark_ready(self.api, pods)
            except (k8s.ApiException, urllib3.exceptions.HTTPError) as error:
                # An API server too busy to answer in time (a 504): a kubelet tries again.
                print(f"  kubelet stand-in: {type(error).__name__}; trying again", flush=True)
                self._stop.wait(self.interval)
                continue
            for pod in pods:
                metadata = pod["metadata"]
                if metadata["name"] not in sampled:
                    self.metrics.set_usage(NAMESPACE, metadata["name"], metadata.get("labels") or {}, POD_CPU)
                    sampled.add(metadata["name"])
            self._stop.wait(self.interval)


# -- the operator --------------------------------------------------------------------


@dataclass
class OperatorProcess:
    kubeconfig: Path
    workdir: Path
    metrics_port: int = field(default_factory=free_port)
    liveness_port: int = field(default_factory=free_port)
    extra_args: tuple[str, ...] = ()
    process: ManagedProcess | None = None

    def start(self) -> OperatorProcess:
        argv = [
            program_path("falachefe-operator"),
            f"--namespace={NAMESPACE}",
            "--standalone",
            f"--liveness-port={self.liveness_port}",
            f"--metrics-port={self.metrics_port}",
            *self.extra_args,
        ]
        env = {"KUBECONFIG": str(self.kubeconfig), "POD_NAMESPACE": NAMESPACE}
        self.process = ManagedProcess("falachefe-operator", argv, self.workdir / "operator.log", env=env).start()
        return self

    def wait_healthy(self) -> None:
        assert self.process is not None
        self.process.wait_until(lambda: http_ok(f"http://127.0.0.1:{self.liveness_port}/healthz"), 120, "healthz")

    @property
    def pid(self) -> int:
        assert self.process is not None and self.process.popen is not None
        return self.process.popen.pid

    def cpu_seconds(self) -> float:
        return cpu_seconds(self.pid)

    def rss_mib(self) -> float:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        raise RuntimeError("no VmRSS")

    def _metrics(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=30) as response:
            return response.read().decode()

    def scrape(self) -> tuple[float, dict[tuple[str, str], float], float]:
        """One read of the operator's metrics: when (monotonic) it arrived, each pool's polls so far
        (its poll counter), and the seconds spent in the garbage collector so far.

        One read, as a Prometheus scrape is: rendering 1,000 resources' series
        costs the operator CPU, which a second read would count twice. The time
        is taken as the text arrives, before parsing it: parsing takes seconds
        at 1,000 resources, which must not count as polling time.
        """
        text = self._metrics()
        taken = time.monotonic()
        polls: dict[tuple[str, str], float] = {}
        collecting = 0.0
        for family in text_string_to_metric_families(text):
            if family.name == "falachefe_operator_pool_autoscale_polls":
                for point in family.samples:
                    if point.name.endswith("_total"):
                        polls[(point.labels["falachefe"], point.labels["pool"])] = point.value
            elif family.name == "falachefe_operator_gc_seconds":
                collecting += sum(p.value for p in family.samples if p.name == "falachefe_operator_gc_seconds_total")
        return taken, polls, collecting

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop(timeout=30)
            self.process = None


# -- the phases -----------------------------------------------------------------------


def statuses(api: k8s.ApiClient) -> list[dict[str, Any]]:
    response = k8s.CustomObjectsApi(api).list_namespaced_custom_object(
        GROUP, VERSION, NAMESPACE, PLURAL, _preload_content=False
    )
    return list(json.loads(response.data)["items"])


def condition_true(item: dict[str, Any], type_: str) -> bool:
    conditions = (item.get("status") or {}).get("conditions") or []
    return any(c["type"] == type_ and c["status"] == "True" for c in conditions)


def operator_events(api: k8s.ApiClient) -> int:
    """Events the operator reported in the namespace (each counted as often as it was sent)."""
    response = k8s.CoreV1Api(api).list_namespaced_event(NAMESPACE, _preload_content=False)
    return sum(
        int(event.get("count") or 1)
        for event in json.loads(response.data)["items"]
        if naming.FIELD_MANAGER in ((event.get("source") or {}).get("component"), event.get("reportingComponent"))
    )


def cold_start(
    api: k8s.ApiClient, plane: ControlPlane, operator: OperatorProcess, kubelet: KubeletStandIn, resources: int
) -> dict[str, Any]:
    before = request_counts(plane)
    reads_before = len(kubelet.metrics.requests)
    status_lists = 0
    started = time.monotonic()
    operator.start()
    kubelet.start()
    cpu_before = 0.0  # the process is new
    reached: dict[str, float] = {}
    deadline = started + 900
    while len(reached) < 3:
        if time.monotonic() > deadline:
            raise TimeoutError(f"not every resource reconciled and scaling after 900 s: {reached}")
        time.sleep(kubelet.interval)
        status_lists += 1
        try:
            items = statuses(api)
        except (k8s.ApiException, urllib3.exceptions.HTTPError) as error:
            print(f"  listing the statuses: {type(error).__name__}; trying again", flush=True)
            continue
        now = time.monotonic() - started
        observed = sum(
            1
            for item in items
            if (item.get("status") or {}).get("observedGeneration") == item["metadata"]["generation"]
        )
        for what, count in (
            ("observed", observed),
            ("ready", sum(condition_true(item, "Ready") for item in items)),
            ("scaling", sum(condition_true(item, "ScalingActive") for item in items)),
        ):
            if count >= resources and what not in reached:
                reached[what] = now
                print(f"  cold: every resource {what} after {now:.1f}s", flush=True)
    wall = time.monotonic() - started
    cpu = operator.cpu_seconds() - cpu_before
    _, _, collecting = operator.scrape()
    kubelet.stop()
    spent = difference(request_counts(plane), before)
    own = {("LIST", "/pods", ""): kubelet.lists, ("PATCH", "/pods", "status"): kubelet.patches}
    own[("LIST", FALACHEFES, "")] = status_lists
    attributed: dict[str, float] = {}
    left_out: dict[str, float] = {}
    for (verb, resource, sub), value in sorted(spent.items()):
        label = f"{verb} {resource}{'/' + sub if sub else ''}"
        if resource not in OPERATOR_RESOURCES or verb in STREAMING_VERBS:
            continue
        if resource == "/events" or (verb, resource, sub) in CONTROLLER_MANAGER:
            left_out[label] = value
            continue
        mine = own.get((verb, resource, sub), 0)
        if mine:
            left_out[f"{label} (this bench)"] = min(mine, value)
        if value - mine > 0:
            attributed[label] = value - mine
    events = operator_events(api)
    attributed["POST /events (Event objects)"] = events
    # What the controller-manager sent meanwhile (its client's default limit is 20 requests/s).
    controller_manager = (
        sum(
            value
            for (verb, resource, sub), value in spent.items()
            if (verb, resource, sub) in CONTROLLER_MANAGER
            or (resource == "apps/replicasets" and verb not in STREAMING_VERBS)
            or (resource == "/events" and verb in {"POST", "PATCH"})
        )
        - events
    )
    attributed["GET metrics.k8s.io/pods (stand-in)"] = len(kubelet.metrics.requests) - reads_before
    total = sum(attributed.values())
    return {
        "seconds": reached,
        "wall_s": wall,
        "requests": attributed,
        "left_out": left_out,
        "requests_per_reconcile": total / resources,
        "controller_manager_requests": controller_manager,
        "cpu_percent": 100 * cpu / wall,
        "gc_percent": 100 * collecting / wall,
        "rss_mib": operator.rss_mib(),
    }


def steady_minute(
    plane: ControlPlane,
    operator: OperatorProcess,
    metrics: MetricsServerStandIn,
    queue: redis.Redis,
    resources: int,
    seconds: float,
) -> dict[str, Any]:
    before, reads_before = request_counts(plane), len(metrics.requests)
    polls_since, polls_before, gc_before = operator.scrape()
    commands_before = int(queue.info("stats")["total_commands_processed"])
    cpu_before = operator.cpu_seconds()
    started = time.monotonic()
    time.sleep(seconds)
    wall = time.monotonic() - started
    cpu = operator.cpu_seconds() - cpu_before
    commands = int(queue.info("stats")["total_commands_processed"]) - commands_before - 1  # less this INFO
    polls_until, polls_after, gc_after = operator.scrape()
    collecting = gc_after - gc_before
    polled = polls_until - polls_since
    spent = {
        f"{verb} {resource}{'/' + sub if sub else ''}": value
        for (verb, resource, sub), value in sorted(difference(request_counts(plane), before).items())
        if resource in OPERATOR_RESOURCES - IDLE_EXCLUDED and verb not in STREAMING_VERBS
    }
    reads = len(metrics.requests) - reads_before
    if reads:
        spent["GET metrics.k8s.io/pods (stand-in)"] = reads
    minutes = wall / 60
    made = {pool: polls_after.get(pool, 0.0) - polls_before.get(pool, 0.0) for pool in polls_after}
    # A pool that caught up on a late poll in the minute makes more than its share: no lag, not a negative one.
    lags = sorted(max(0.0, polled / n - POLL_SECONDS) if n else math.inf for n in made.values())
    expected = len(made) * polled / POLL_SECONDS
    return {
        "wall_s": wall,
        "requests": spent,
        "requests_per_resource_minute": sum(spent.values()) / resources / minutes,
        "pools": len(made),
        "polls": sum(made.values()),
        "polls_expected": expected,
        "poll_lag_p50_s": lags[len(lags) // 2] if lags else math.inf,
        "poll_lag_p99_s": lags[max(0, math.ceil(0.99 * len(lags)) - 1)] if lags else math.inf,
        "poll_lag_max_s": lags[-1] if lags else math.inf,
        "cpu_percent": 100 * cpu / wall,
        "gc_percent": 100 * collecting / wall,
        "rss_mib": operator.rss_mib(),
        "redis_commands_per_resource_minute": commands / resources / minutes,
        "redis_clients": int(queue.info("clients")["connected_clients"]) - 1,  # less this connection
    }


@contextlib.contextmanager
def busy_cores() -> Iterator[int]:
    """One spinning process per core but one, for as long as the block runs."""
    count = max(1, (os.cpu_count() or 2) - 1)
    burners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(count)]
    try:
        yield count
    finally:
        for burner in burners:
            burner.kill()
        for burner in burners:
            burner.wait()


# -- the run --------------------------------------------------------------------------


def setup(api: k8s.ApiClient, plane: ControlPlane, redis_url: str, resources: int) -> None:
    kubectl(plane.kubeconfig, "apply", "--server-side", "-f", str(REPO / crd.CRD_PATH))

    def established() -> bool:
        found = k8s.ApiextensionsV1Api(api).read_custom_resource_definition(crd.CRD_NAME)
        return any(c.type == "Established" and c.status == "True" for c in (found.status.conditions or []))

    wait_for(established, timeout=60, what=f"CRD {crd.CRD_NAME} established")
    core = k8s.CoreV1Api(api)
    core.create_namespace(k8s.V1Namespace(metadata=k8s.V1ObjectMeta(name=NAMESPACE)))
    for secret, key, value in (
        ("bench-db", "dsn", "postgresql://u:p@db/x"),
        ("bench-redis", "url", redis_url),
        ("bench-otp", "otpSecret", "an HMAC key"),
    ):
        core.create_namespaced_secret(
            NAMESPACE, k8s.V1Secret(metadata=k8s.V1ObjectMeta(name=secret), string_data={key: value})
        )
    custom = k8s.CustomObjectsApi(api)
    for index in range(resources):
        custom.create_namespaced_custom_object(
            GROUP, VERSION, NAMESPACE, PLURAL, falachefe(f"fleet-{index}"), _preload_content=False
        )


def bench(
    resources: int, minute: float, controller_manager_qps: int | None, operator_args: tuple[str, ...] = ()
) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="falachefe-bench-scale-"))
    plane = ControlPlane(workdir / "kube", toolchain.ensure_all(), controller_manager_qps=controller_manager_qps)
    plane.start()
    redis_server = RedisServer(workdir / "redis", persist=False).start()
    metrics = MetricsServerStandIn(workdir / "metrics-server").start()
    api = k8s_config.new_client_from_config(config_file=str(plane.kubeconfig))
    queue = redis.Redis.from_url(redis_server.url(0))
    operator: OperatorProcess | None = None
    try:
        with registered(api, metrics):
            setup(api, plane, redis_server.url(0), resources)
            kubeconfig = bind_operator_identity(api, plane, NAMESPACE, workdir)
            operator = OperatorProcess(kubeconfig, workdir, extra_args=operator_args)
            print(f"  {resources} resources created; starting the operator", flush=True)
            # Every 0.5 s, less often with thousands of objects: each LIST costs the API server too.
            interval = max(0.5, resources / 500)
            cold = cold_start(api, plane, operator, KubeletStandIn(api, metrics, interval), resources)
            # The last Events of the start, and the live figures its statuses held back, are written.
            time.sleep(LIVE_STATUS_SECONDS + 2 * POLL_SECONDS)
            print("  idle minute", flush=True)
            idle = steady_minute(plane, operator, metrics, queue, resources, minute)
            with busy_cores() as burners:
                print(f"  the same minute with {burners} core(s) busy", flush=True)
                time.sleep(2)
                busy = steady_minute(plane, operator, metrics, queue, resources, minute)
            return {
                "resources": resources,
                "controller_manager_qps": controller_manager_qps or 20,
                "cpus": os.cpu_count(),
                "operator_args": list(operator_args),
                "burners": burners,
                "cold": cold,
                "idle": idle,
                "busy": busy,
                "operator_log": str(workdir / "operator.log"),
            }
    finally:
        if operator is not None:
            operator.stop()
        queue.close()
        metrics.stop()
        redis_server.stop()
        plane.stop()


def within(value: float, goal: float, *, strict: bool) -> bool:
    return value < goal if strict else value <= goal


def report(result: dict[str, Any]) -> str:
    n, cold, idle, busy = result["resources"], result["cold"], result["idle"], result["busy"]

    def row(what: str, goal: str, *values: str, met: bool | None = None) -> str:
        verdict = "" if met is None else ("met" if met else "MISSED")
        return f"{what:42}" + "".join(f"{v:>12}" for v in values) + f"{goal:>12}  {verdict}"

    seconds = cold["seconds"]
    lines = [
        f"operator at scale: {n} Falachefe resources, 2 pools each, autoscaling on (queue + CPU, every"
        f" {POLL_SECONDS} s); {result['cpus']} CPUs"
        + (f"; operator {' '.join(result['operator_args'])}" if result.get("operator_args") else ""),
        "",
        f"{'cold start (operator starts, all unreconciled)':42}{'measured':>12}{'goal':>12}",
        row("every status at its generation (s)", "", f"{seconds['observed']:.1f}"),
        row("every resource Ready (s)", "", f"{seconds['ready']:.1f}"),
        row(
            "every resource ScalingActive (s)",
            f"<= {GOALS['cold_seconds']:.0f}",
            f"{seconds['scaling']:.1f}",
            met=seconds["scaling"] <= GOALS["cold_seconds"],
        ),
        row(
            "API requests per reconcile",
            f"<= {GOALS['requests_per_reconcile']:.0f}",
            f"{cold['requests_per_reconcile']:.1f}",
            met=cold["requests_per_reconcile"] <= GOALS["requests_per_reconcile"],
        ),
        row("operator CPU, % of a core", "", f"{cold['cpu_percent']:.0f}"),
        row("  of which garbage collection", "", f"{cold['gc_percent']:.0f}"),
        row(
            f"controller-manager requests / s (limit {result['controller_manager_qps']})",
            "",
            f"{cold['controller_manager_requests'] / seconds['ready']:.1f}",
        ),
        row("operator RSS after (MiB)", "", f"{cold['rss_mib']:.0f}"),
        "",
        f"{'a steady minute':42}{'idle':>12}{'busy':>12}{'goal':>12}",
    ]
    for key, goal_key, what, goal, fmt in (
        (
            "requests_per_resource_minute",
            "requests_per_resource_minute",
            "API requests / resource / minute",
            "<= 1",
            "{:.2f}",
        ),
        ("cpu_percent", "cpu_percent", "operator CPU, % of one core", "<= 10", "{:.1f}"),
        ("rss_mib", "rss_mib", "operator RSS (MiB)", "<= 250", "{:.0f}"),
        ("poll_lag_p99_s", "poll_lag_p99_seconds", "poll lag p99 over pools (s)", "< 1", "{:.2f}"),
    ):
        met_idle, met_busy = (
            within(phase[key], GOALS[goal_key], strict=key.startswith("poll")) for phase in (idle, busy)
        )
        verdict = "met" if met_idle and met_busy else ("MISSED busy" if met_idle else "MISSED")
        lines.append(f"{what:42}{fmt.format(idle[key]):>12}{fmt.format(busy[key]):>12}{goal:>12}  {verdict}")
    lines += [
        f"{'  of which garbage collection':42}{idle['gc_percent']:>12.1f}{busy['gc_percent']:>12.1f}",
        f"{'polls made / expected':42}{idle['polls']:>6.0f}/{idle['polls_expected']:<5.0f}"
        f"{busy['polls']:>6.0f}/{busy['polls_expected']:<5.0f}",
        f"{'poll lag p50 / max (s)':42}{idle['poll_lag_p50_s']:>5.2f}/{idle['poll_lag_max_s']:<6.2f}"
        f"{busy['poll_lag_p50_s']:>5.2f}/{busy['poll_lag_max_s']:<6.2f}",
        f"{'Redis commands / resource / minute':42}{idle['redis_commands_per_resource_minute']:>12.1f}"
        f"{busy['redis_commands_per_resource_minute']:>12.1f}",
        f"{'Redis connections':42}{idle['redis_clients']:>12}{busy['redis_clients']:>12}",
        "",
        "busy: " + f"{result['burners']} process(es) spinning on the other core(s) during the minute.",
        "machine load average (1, 5, 15 min) before the run: "
        + ", ".join(f"{x:.1f}" for x in result["load_average"]["before"])
        + "; after: "
        + ", ".join(f"{x:.1f}" for x in result["load_average"]["after"]),
        "cold requests (verb resource: count): " + ", ".join(f"{k}: {v:.0f}" for k, v in cold["requests"].items()),
        "cold, left out (controller-manager, this bench): "
        + ", ".join(f"{k}: {v:.0f}" for k, v in cold["left_out"].items()),
        "idle minute requests: " + (", ".join(f"{k}: {v:.0f}" for k, v in idle["requests"].items()) or "none"),
        "busy minute requests: " + (", ".join(f"{k}: {v:.0f}" for k, v in busy["requests"].items()) or "none"),
    ]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--resources", type=int, default=200)
    parser.add_argument("--minute", type=float, default=60.0, help="length of each steady measurement (s)")
    parser.add_argument(
        "--controller-manager-qps",
        type=int,
        default=None,
        help="the controller-manager's request rate limit (its default: 20/s); it bounds the time to Ready",
    )
    parser.add_argument(
        "--operator-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="pass to falachefe-operator (repeatable), e.g. --operator-arg=--no-gc-freeze to switch an idea off",
    )
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    load_before = os.getloadavg()
    result = bench(args.resources, args.minute, args.controller_manager_qps, tuple(args.operator_arg))
    result["load_average"] = {"before": load_before, "after": os.getloadavg()}
    path = args.json or REPO / "bench" / "out" / f"operator_scale_{args.resources}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2))
    print(report(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
