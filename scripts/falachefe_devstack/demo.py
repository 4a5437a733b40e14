"""The demo: the whole Falachefe system on one machine, in one command (``make demo``).

Everything runs for real, on a real node, except the LLM:

- the local stack: PostgreSQL, Redis, a Kubernetes control plane (etcd,
  kube-apiserver with RBAC, kube-controller-manager, kube-scheduler) and a
  node (containerd, runc, CNI, kubelet, kube-proxy, metrics-server), see
  :mod:`falachefe_devstack.stack`;
- the project image, built from the Dockerfile (:mod:`falachefe_devstack.images`);
- the operator, installed by its Helm chart (its own Deployment,
  ServiceAccount and least-privilege RBAC), running in a pod from that image;
- a ``Falachefe`` with an auth pool and a crew pool, whose workers run as
  pods from the same image and scale on queue depth and CPU;
- the database schema, migrated by the operator's migration Job (the
  image's ``falachefe-runtime migrate``) before any worker starts, and a
  seeded company with users and a crew;
- a burst of WhatsApp-style messages on the real ``whatsapp-processing``
  queue; the replies come back on ``whatsapp-outbound``, where the demo
  plays the WhatsApp sender.

The LLM is a stand-in (a local OpenAI-compatible server, labelled as such on
screen) unless ``--llm-url`` names a real endpoint.

``--short --headless`` is the CI mode: a smaller burst, short windows, one
status line every few seconds, and a JSON summary (``--summary-json``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import shutil
import signal
import statistics
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bullmq import Job, Worker
from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes.client.rest import ApiException

from falachefe_operator import naming
from falachefe_operator.resource import API_VERSION, GROUP, KIND, PLURAL, VERSION
from falachefe_runtime.config import DEFAULT_QUEUES, WorkerKind
from falachefe_runtime.payloads import PROCESS_MESSAGE, OutboundKind, OutboundMessage
from falachefe_runtime.queues import OUTBOUND_QUEUE, WHATSAPP_QUEUE, Queues

from . import toolchain
from .helm import Helm, operator_values
from .kube import kubectl
from .llm_standin import FakeOpenAI
from .seed import Tenant, process_message_job, seed_tenant_sync
from .stack import LocalStack
from .waiting import wait_for

REPO = Path(__file__).resolve().parents[2]
NAMESPACE = "falachefe-demo"
OPERATOR_NAMESPACE = "falachefe-system"
RESOURCE = "demo"
#: The demo's pools and their bounds: small enough for two cores.
POOL_BOUNDS: dict[WorkerKind, tuple[int, int]] = {WorkerKind.AUTH: (1, 3), WorkerKind.CREW: (1, 3)}
POOLS = tuple(POOL_BOUNDS)

log = logging.getLogger("falachefe.demo")


@dataclass(frozen=True)
class Options:
    messages: int
    users: int
    distinct_texts: int
    burst_seconds: float
    scale_down_window_s: int
    llm_delay_s: float
    timeout_s: float
    headless: bool
    llm_url: str | None
    llm_key: str | None
    llm_model: str
    plot: Path | None
    summary_json: Path | None
    keep: bool

    @classmethod
    def from_args(cls, argv: list[str] | None = None) -> Options:
        parser = argparse.ArgumentParser(prog="make demo", description=__doc__.split("\n\n")[0])
        parser.add_argument("--short", action="store_true", help="a small burst and short windows (CI mode)")
        parser.add_argument("--headless", action="store_true", help="plain status lines instead of a live screen")
        parser.add_argument("--messages", type=int, help="messages in the burst (default 240, short 60)")
        parser.add_argument("--llm-url", help="a real OpenAI-compatible endpoint instead of the local stand-in")
        parser.add_argument("--llm-key", default=os.environ.get("FALACHEFE_DEMO_LLM_KEY"), help="its API key")
        parser.add_argument("--llm-model", default="gpt-4o-mini")
        parser.add_argument("--plot", type=Path, help="write the timeline as a PNG here")
        parser.add_argument("--summary-json", type=Path, help="write the summary as JSON here")
        parser.add_argument("--keep", action="store_true", help="keep the work directory (logs) afterwards")
        args = parser.parse_args(argv)
        short = bool(args.short)
        return cls(
            messages=args.messages or (60 if short else 240),
            users=10 if short else 30,
            distinct_texts=40 if short else 120,
            burst_seconds=3.0 if short else 10.0,
            scale_down_window_s=10 if short else 30,
            llm_delay_s=0.5,
            timeout_s=420 if short else 900,
            headless=bool(args.headless),
            llm_url=args.llm_url,
            llm_key=args.llm_key,
            llm_model=args.llm_model,
            plot=args.plot,
            summary_json=args.summary_json,
            keep=bool(args.keep),
        )


@dataclass
class PoolSample:
    desired: int
    ready: int
    queue_depth: int


@dataclass
class Sample:
    t: float
    pools: dict[str, PoolSample]
    answered: int


@dataclass
class Summary:
    sent: int
    answered: int
    refused: int
    failed_jobs: dict[str, int]
    peak_replicas: dict[str, int]
    final_replicas: dict[str, int]
    min_replicas: dict[str, int]
    scaled_up: bool
    scaled_back: bool
    latency_p50_s: float | None
    latency_p99_s: float | None
    duration_s: float
    scale_events: list[str] = field(default_factory=list)
    llm: str = "stand-in"

    @property
    def ok(self) -> bool:
        return (
            self.answered == self.sent
            and self.refused == 0
            and not any(self.failed_jobs.values())
            and self.scaled_up
            and self.scaled_back
        )


class Demo:
    def __init__(self, options: Options, workdir: Path) -> None:
        self.options = options
        self.workdir = workdir
        self.stack = LocalStack(workdir / "stack", with_node=True)
        self.llm: FakeOpenAI | None = None
        self.api: k8s.ApiClient | None = None
        self.sent_at: dict[str, float] = {}
        self.latencies: list[float] = []
        self.refused = 0
        self.samples: list[Sample] = []
        self.events_seen: set[str] = set()
        self.events: list[str] = []  # the Falachefe's Events, "Reason: message"
        self.events_printed = 0
        self.min_replicas = {pool.value: bounds[0] for pool, bounds in POOL_BOUNDS.items()}
        self.tenant = Tenant(company_id=uuid.UUID(int=0), phones=())
        self.started = time.monotonic()
        self.burst_started = self.started

    # -- set-up -------------------------------------------------------------------------

    def set_up(self) -> None:
        self.say(
            "starting PostgreSQL, Redis, a Kubernetes control plane and a node, with the project image "
            "(the first run builds Kubernetes and the image: 15-25 minutes; progress below)"
        )
        self.stack.start()
        assert self.stack.kube is not None and self.stack.postgres is not None and self.stack.redis is not None
        assert self.stack.image is not None
        self.api = k8s_config.new_client_from_config(config_file=str(self.stack.kube.kubeconfig))
        self.say(self.stack.describe())
        self.kubectl("create", "namespace", NAMESPACE)
        self.install_operator()
        dsn = self.stack.postgres.create_database("falachefe")
        host = self.stack.pod_host
        llm_url, llm_key = self.options.llm_url, self.options.llm_key or "demo-key-not-secret"
        if llm_url is None:
            self.llm = FakeOpenAI(delay_s=self.options.llm_delay_s, host=host).start()
            llm_url = self.llm.base_url
            self.say(f"LLM: the demo's stand-in model (a local OpenAI-compatible server) at {llm_url}")
        else:
            self.say(f"LLM: {llm_url} ({self.options.llm_model})")
        # What the pods use: the servers on this machine, at the host end of the node's link.
        secrets = {
            "falachefe-db": {"dsn": self.stack.postgres.dsn("falachefe", host=host)},
            "falachefe-redis": {"url": self.stack.redis.url(0, host=host)},
            "falachefe-llm": {"apiKey": llm_key},
            "falachefe-otp": {"otpSecret": uuid.uuid4().hex},
        }
        core = k8s.CoreV1Api(self.api)
        for name, data in secrets.items():
            core.create_namespaced_secret(
                NAMESPACE, k8s.V1Secret(metadata=k8s.V1ObjectMeta(name=name), string_data=data)
            )
        self.apply_resource(llm_url)
        self.say("the operator migrates the empty database with a Job before it starts any worker")
        migrated = wait_for(self.migrated, timeout=300, interval=1.0, what="the migration Job done")
        assert migrated is not None
        self.say(f"migration Job {migrated['job']}: schema version {migrated.get('schemaVersion')}")
        self.tenant = self.seed(dsn)
        self.say("waiting for the worker pods to be Ready")
        wait_for(self.resource_ready, timeout=300, interval=1.0, what="Falachefe Ready")
        self.say("Falachefe is Ready")
        self.show_resource()
        self.say(f"$ kubectl get pods -n {NAMESPACE} -o wide")
        print(self.kubectl("get", "pods", "-n", NAMESPACE, "-o", "wide"), end="", flush=True)

    def install_operator(self) -> None:
        """The operator chart, as a platform team installs it, with the image built from this tree."""
        assert self.stack.kube is not None and self.stack.image is not None
        helm = Helm(toolchain.ensure_helm() / "helm", self.workdir / "helm", self.stack.kube.kubeconfig)
        self.say(f"$ helm install falachefe-operator helm/falachefe-operator -n {OPERATOR_NAMESPACE} --wait")
        helm.install(
            "falachefe-operator",
            OPERATOR_NAMESPACE,
            operator_values(self.stack.image, [NAMESPACE]),
            flags=("--create-namespace", "--wait", "--timeout", "5m"),
        )
        self.say("the operator is running in its pod")

    def apply_resource(self, llm_url: str) -> None:
        window = self.options.scale_down_window_s
        scale_down = {
            "stabilizationWindowSeconds": window,
            "policies": [{"type": "Percent", "value": 100, "periodSeconds": 5}],
        }
        scale_up = {"stabilizationWindowSeconds": 0, "policies": [{"type": "Pods", "value": 4, "periodSeconds": 5}]}
        body = {
            "apiVersion": API_VERSION,
            "kind": KIND,
            "metadata": {"name": RESOURCE, "namespace": NAMESPACE},
            "spec": {
                "image": self.stack.image,
                "imagePullPolicy": "Never",
                "database": {"secretRef": {"name": "falachefe-db"}},
                "redis": {"secretRef": {"name": "falachefe-redis"}},
                "llm": {
                    "model": self.options.llm_model,
                    "baseURL": llm_url,
                    "apiKeySecretRef": {"name": "falachefe-llm"},
                },
                "auth": {"otpSecretRef": {"name": "falachefe-otp"}},
                "pools": {
                    "auth": {
                        "minReplicas": POOL_BOUNDS[WorkerKind.AUTH][0],
                        "maxReplicas": POOL_BOUNDS[WorkerKind.AUTH][1],
                        "terminationGracePeriodSeconds": 30,
                        "resources": {"requests": {"cpu": "250m", "memory": "256Mi"}},
                        "autoscaling": {
                            "pollingIntervalSeconds": 2,
                            "targetQueueDepthPerReplica": 10,
                            "behavior": {"scaleUp": scale_up, "scaleDown": scale_down},
                        },
                    },
                    "crew": {
                        "minReplicas": POOL_BOUNDS[WorkerKind.CREW][0],
                        "maxReplicas": POOL_BOUNDS[WorkerKind.CREW][1],
                        "terminationGracePeriodSeconds": 60,
                        "jobTimeoutSeconds": 50,
                        "resources": {"requests": {"cpu": "500m", "memory": "512Mi"}},
                        "autoscaling": {
                            "pollingIntervalSeconds": 2,
                            "targetQueueDepthPerReplica": 6,
                            "behavior": {"scaleUp": scale_up, "scaleDown": scale_down},
                        },
                    },
                },
            },
        }
        k8s.CustomObjectsApi(self.api).create_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, body)

    def seed(self, dsn: str) -> Tenant:
        tenant = seed_tenant_sync(dsn, self.options.users)
        self.say(f"seeded company {tenant.company_id} with {self.options.users} users and a crew")
        return tenant

    # -- the burst ------------------------------------------------------------------------

    async def run_burst(self) -> None:
        assert self.stack.redis is not None
        redis_url = self.stack.redis.url(0)
        queues = Queues(redis_url)
        sender = Worker(
            OUTBOUND_QUEUE,
            self.deliver,
            {"connection": redis_url, "concurrency": 20, "autorun": True},
        )
        try:
            self.say(
                f"sending {self.options.messages} WhatsApp messages over {self.options.burst_seconds:.0f}s "
                f"from {self.options.users} users"
            )
            self.burst_started = time.monotonic()
            feeder = asyncio.create_task(self.feed(queues))
            deadline = time.monotonic() + self.options.timeout_s
            next_render = 0.0
            while time.monotonic() < deadline:
                sample = await asyncio.to_thread(self.sample)
                await self.sample_queues(queues, sample)
                self.samples.append(sample)
                if time.monotonic() >= next_render:
                    await asyncio.to_thread(self.render, sample)
                    next_render = time.monotonic() + (3.0 if self.options.headless else 1.0)
                if feeder.done() and self.finished(sample):
                    break
                await asyncio.sleep(0.5)
            await feeder
        finally:
            await sender.close()
            await queues.close()

    async def feed(self, queues: Queues) -> None:
        interval = self.options.burst_seconds / max(self.options.messages, 1)
        for i in range(self.options.messages):
            text = f"Bom dia! Vocês têm pão de queijo? (pergunta {i % self.options.distinct_texts})"
            message_id, job = process_message_job(self.tenant, i, text)
            self.sent_at[message_id] = time.monotonic()
            await queues.enqueue(WHATSAPP_QUEUE, PROCESS_MESSAGE, job)
            await asyncio.sleep(interval)

    async def deliver(self, job: Job, token: str) -> None:
        """The WhatsApp sender's stand-in: record each reply and how long it took."""
        outbound = OutboundMessage.model_validate(job.data)
        if outbound.kind is OutboundKind.REFUSAL:
            self.refused += 1
        sent = self.sent_at.pop(outbound.reply_to, None) if outbound.reply_to else None
        if sent is not None and outbound.kind is OutboundKind.REPLY:
            self.latencies.append(time.monotonic() - sent)

    # -- observation ------------------------------------------------------------------------

    def sample(self) -> Sample:
        apps = k8s.AppsV1Api(self.api)
        pools: dict[str, PoolSample] = {}
        for pool in POOLS:
            try:
                deployment = apps.read_namespaced_deployment(naming.deployment_name(RESOURCE, pool), NAMESPACE)
                desired = deployment.spec.replicas or 0
                ready = deployment.status.ready_replicas or 0
            except ApiException:
                desired = ready = 0
            pools[pool.value] = PoolSample(desired=desired, ready=ready, queue_depth=0)
        self.collect_events()
        return Sample(t=time.monotonic() - self.burst_started, pools=pools, answered=len(self.latencies))

    async def sample_queues(self, queues: Queues, sample: Sample) -> None:
        for pool in POOLS:
            sample.pools[pool.value].queue_depth = await queues.backlog(DEFAULT_QUEUES[pool])

    def collect_events(self) -> None:
        events = k8s.CoreV1Api(self.api).list_namespaced_event(NAMESPACE).items
        for event in sorted(events, key=lambda e: e.metadata.creation_timestamp):
            if event.metadata.uid in self.events_seen:
                continue
            self.events_seen.add(event.metadata.uid)
            if event.involved_object.kind == "Falachefe":
                line = f"{event.reason}: {event.message}"
                self.events.append(line)

    def finished(self, sample: Sample) -> bool:
        everything_answered = len(self.latencies) + self.refused >= self.options.messages
        back_to_min = all(sample.pools[p].desired == self.min_replicas[p] for p in POOLS)
        scaled_up = any(self.peak(p) > self.min_replicas[p] for p in POOLS)
        return everything_answered and back_to_min and scaled_up

    def peak(self, pool: str) -> int:
        return max((s.pools[pool].desired for s in self.samples), default=0)

    def migrated(self) -> dict[str, Any] | None:
        resource = k8s.CustomObjectsApi(self.api).get_namespaced_custom_object(
            GROUP, VERSION, NAMESPACE, PLURAL, RESOURCE
        )
        migration = resource.get("status", {}).get("migration") or {}
        if migration.get("phase") == "Failed":
            job = migration.get("job")
            raise RuntimeError(f"the migration Job failed; see: kubectl logs -n {NAMESPACE} job/{job}")
        return dict(migration) if migration.get("phase") == "Succeeded" else None

    def resource_ready(self) -> bool:
        resource = k8s.CustomObjectsApi(self.api).get_namespaced_custom_object(
            GROUP, VERSION, NAMESPACE, PLURAL, RESOURCE
        )
        conditions = resource.get("status", {}).get("conditions", [])
        return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)

    # -- screen -------------------------------------------------------------------------------

    def render(self, sample: Sample) -> None:
        answered = sample.answered
        p99 = _percentile(self.latencies, 0.99)
        pools = "  ".join(
            f"{pool}: {s.ready}/{s.desired} ready, queue {s.queue_depth:>4}" for pool, s in sample.pools.items()
        )
        latency = f"  p99 {p99:.2f}s" if p99 is not None else ""
        line = f"t={sample.t:6.1f}s  {pools}  answered {answered}/{self.options.messages}{latency}"
        if self.options.headless:
            print(line, flush=True)
            for event in self.events[self.events_printed :]:
                print(f"    event  {event}", flush=True)
            self.events_printed = len(self.events)
            return
        screen = [
            "\x1b[2J\x1b[H",
            "Falachefe demo (real node and pods; the LLM is the demo's stand-in)",
            "",
            line,
            "",
        ]
        screen.append("pool   desired  ready  queue depth")
        for pool, s in sample.pools.items():
            screen.append(f"{pool:<6} {s.desired:>7}  {s.ready:>5}  {s.queue_depth:>11}")
        screen += ["", "operator events (newest last):"]
        screen += [f"  {event}" for event in self.events[-8:]]
        print("\n".join(screen), flush=True)

    def say(self, message: str) -> None:
        print(f"[demo] {message}", flush=True)

    # -- results -----------------------------------------------------------------------------

    async def failed_counts(self) -> dict[str, int]:
        assert self.stack.redis is not None
        queues = Queues(self.stack.redis.url(0))
        try:
            return {
                queue: (await queues.counts(queue, ("failed",)))["failed"]
                for queue in (*(DEFAULT_QUEUES[pool] for pool in POOLS), OUTBOUND_QUEUE)
            }
        finally:
            await queues.close()

    def summary(self, failed: dict[str, int]) -> Summary:
        final = self.samples[-1].pools if self.samples else {}
        peak = {pool.value: self.peak(pool) for pool in POOLS}
        return Summary(
            sent=self.options.messages,
            answered=len(self.latencies),
            refused=self.refused,
            failed_jobs=failed,
            peak_replicas=peak,
            final_replicas={pool: final[pool].desired for pool in final},
            min_replicas=dict(self.min_replicas),
            scaled_up=any(peak[p] > self.min_replicas[p] for p in POOLS),
            scaled_back=all(final.get(p) is not None and final[p].desired == self.min_replicas[p] for p in POOLS),
            latency_p50_s=_percentile(self.latencies, 0.5),
            latency_p99_s=_percentile(self.latencies, 0.99),
            duration_s=round(time.monotonic() - self.started, 1),
            scale_events=[e for e in self.events if e.startswith("Scaled:")],
            llm="stand-in" if self.llm is not None else str(self.options.llm_url),
        )

    def plot(self, path: Path) -> None:
        import matplotlib  # noqa: PLC0415 - only --plot needs it, and it is slow to import

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # noqa: PLC0415

        times = [s.t for s in self.samples]
        figure, (replicas, depth) = plt.subplots(2, 1, sharex=True, figsize=(9, 6))
        for pool in POOLS:
            replicas.step(times, [s.pools[pool].desired for s in self.samples], where="post", label=f"{pool} desired")
            replicas.step(
                times, [s.pools[pool].ready for s in self.samples], where="post", linestyle=":", label=f"{pool} ready"
            )
            depth.plot(times, [s.pools[pool].queue_depth for s in self.samples], label=f"{pool} queue depth")
        depth.plot(times, [s.answered for s in self.samples], label="answered (cumulative)", color="black")
        replicas.set_ylabel("replicas")
        depth.set_ylabel("jobs")
        depth.set_xlabel("seconds since the burst started")
        replicas.legend(loc="upper right", fontsize="small")
        depth.legend(loc="upper right", fontsize="small")
        replicas.set_title("Falachefe demo: pools scaling on queue depth and CPU (real pods; LLM: stand-in)")
        figure.tight_layout()
        figure.savefig(path, dpi=110)
        plt.close(figure)

    # -- helpers -------------------------------------------------------------------------------

    def kubectl(self, *args: str) -> str:
        assert self.stack.kube is not None
        return kubectl(self.stack.kube.kubeconfig, *args).stdout

    def show_resource(self) -> None:
        """What a platform engineer would look at: `kubectl get falachefe -o wide`."""
        self.say(f"$ kubectl get falachefe -n {NAMESPACE} -o wide")
        print(self.kubectl("get", "falachefe", "-n", NAMESPACE, "-o", "wide"), end="", flush=True)

    def tear_down(self) -> None:
        if self.llm is not None:
            self.llm.stop()
        # The node's stop takes every pod with it (SIGKILL); the demo's summary is already taken.
        self.stack.stop()


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    if len(values) == 1:
        return round(values[0], 3)
    return round(statistics.quantiles(values, n=100, method="inclusive")[int(q * 100) - 1], 3)


@contextlib.contextmanager
def _interrupts_as_exit() -> Iterator[None]:
    """SIGTERM behaves like Ctrl-C: unwind and tear everything down."""

    def handler(signum: int, frame: object) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second one must not cut the tear-down short
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    options = Options.from_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="falachefe-demo-"))
    demo = Demo(options, workdir)
    summary: Summary | None = None
    with _interrupts_as_exit():
        try:
            demo.set_up()
            asyncio.run(demo.run_burst())
            summary = demo.summary(asyncio.run(demo.failed_counts()))
            demo.show_resource()
        except KeyboardInterrupt:
            demo.say("interrupted: tearing down")
        finally:
            demo.tear_down()
    if summary is not None:
        print(json.dumps(asdict(summary), indent=2), flush=True)
        if options.summary_json:
            options.summary_json.write_text(json.dumps(asdict(summary), indent=2))
        if options.plot:
            demo.plot(options.plot)
            demo.say(f"timeline written to {options.plot}")
        verdict = "OK" if summary.ok else "NOT OK"
        demo.say(
            f"{verdict}: {summary.answered}/{summary.sent} answered, failures {sum(summary.failed_jobs.values())}, "
            f"peak replicas {summary.peak_replicas}, p99 {summary.latency_p99_s}s"
        )
    if options.keep:
        demo.say(f"logs kept in {workdir}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0 if summary is not None and summary.ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
