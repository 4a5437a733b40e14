"""The autoscaler against the HPA's CPU formula and KEDA's backlog / target, on simulated traffic.

Run from the repository root::

    .venv/bin/python -m bench.autoscale_sim [--hours H] [--seed S] [--plot PATH]

Five arrival traces (steady, a burst, a daily wave compressed into the run,
a sawtooth, noisy) are replayed against a model of a crew pool: jobs of
lognormal service time on workers of fixed concurrency, pods that take a
while to start before they take jobs, pods that finish their in-flight jobs
before they go (the runtime's graceful shutdown), and the ReplicaSet's
choice of which pods to delete (starting ones first, then the newest).
Every policy sees the same jobs (seeded), and is polled at its own period:

- ``ours``: ``falachefe_operator.scaling.decision.decide``, the operator's
  own code, every 5 s, with queue counts read fresh from "Redis" and CPU
  from the metrics-server model below;
- ``hpa-cpu``: the Kubernetes HPA (autoscaling/v2) on CPU utilisation,
  every 15 s: its replica calculator (unready pods as 0% on a scale-up,
  missing ones as 100% on a scale-down), tolerance, default behavior;
- ``keda``: KEDA's external metric, backlog (waiting + active) / target per
  replica, fed to the same HPA every 15 s (its cooldown: the HPA's 300 s
  scale-down stabilization, KEDA's default);
- ``keda-list``: KEDA's Redis list scaler as one would point it at bullmq:
  ``LLEN bull:<queue>:wait`` only, blind to the jobs in flight.

The baselines are written here from the Kubernetes and KEDA sources, not
from our decision module, so a bug there does not flatter us here.
metrics-server is modelled as it behaves: a sample every 15 s, averaged
over the past 15 s, none for a pod until its first full window.

Reported per trace and policy: queue wait p50 / p99 (jobs still waiting at
the end count with their wait so far), SLO-violation seconds (time during
which the oldest waiting job had waited longer than the SLO), pod-hours
used, and scale actions (writes of the replica count: flapping shows here).
Ratios are ours over each baseline, from the same run.
"""

from __future__ import annotations

import argparse
import heapq
import math
import random
import statistics
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from falachefe_operator.scaling.decision import decide
from falachefe_operator.scaling.history import History
from falachefe_operator.scaling.observation import CpuSample, Observation, QueueCounts
from falachefe_operator.scaling.policy import ScalingPolicy

DEFAULT_PLOT = Path(__file__).resolve().parent / "out" / "autoscale_sim.png"


@dataclass(frozen=True)
class Workload:
    """A crew pool: long jobs, mostly waiting on the LLM, on slow-starting pods."""

    service_mean_s: float = 8.0
    service_sigma: float = 0.6  # lognormal shape: a long tail of slow crews
    concurrency: int = 3
    startup_s: float = 20.0  # pod created -> Ready and taking jobs
    cpu_idle: float = 0.05  # of the request, with nothing to do
    cpu_per_busy_slot: float = 0.25  # of the request, per job in flight
    slo_wait_s: float = 30.0
    min_replicas: int = 1
    max_replicas: int = 40
    target_queue_depth: int = 5  # per replica: 3 in flight + 2 waiting
    target_cpu_percent: int = 70


WORKLOAD = Workload()
METRICS_RESOLUTION_S = 15.0
TICK_S = 1.0

# -- traffic -------------------------------------------------------------------------

RateFn = Callable[[float], float]


def traces(duration: float, seed: int) -> dict[str, RateFn]:
    """Arrival rates (jobs/s) over time; 'noisy' draws its wobble from ``seed``."""
    rng = random.Random(seed * 7919)
    wobble = [rng.lognormvariate(0, 0.5) for _ in range(int(duration // 20) + 2)]

    def burst(t: float) -> float:
        if 0.25 * duration <= t < 0.25 * duration + 300:
            return 14.0  # five minutes that need 38 of the 40 replicas
        if 0.65 * duration <= t < 0.65 * duration + 60:
            return 30.0  # one minute beyond what 40 replicas can serve
        return 1.5

    return {
        "steady": lambda t: 6.0,
        "burst": burst,
        "daily-wave": lambda t: 1.0 + 11.0 * (1 - math.cos(2 * math.pi * t / duration)) / 2,
        "sawtooth": lambda t: 0.5 + 11.5 * ((t % 900) / 900),
        "noisy": lambda t: 6.0 * wobble[int(t // 20)],
    }


@dataclass(frozen=True)
class Job:
    arrival: float
    service: float


def jobs_for(rate: RateFn, duration: float, seed: int, workload: Workload) -> list[Job]:
    """A Poisson process of the given rate (by thinning) with lognormal service times."""
    rng = random.Random(seed)
    peak = max(rate(t) for t in range(int(duration))) * 1.01
    mu = math.log(workload.service_mean_s) - workload.service_sigma**2 / 2
    jobs = []
    t = 0.0
    while True:
        t += rng.expovariate(peak)
        if t >= duration:
            return jobs
        if rng.random() * peak < rate(t):
            jobs.append(Job(t, rng.lognormvariate(mu, workload.service_sigma)))


# -- the cluster -----------------------------------------------------------------------

ARRIVAL, SLOT_READY, FINISH = 0, 1, 2


@dataclass(eq=False)
class Pod:
    created: float
    ready_at: float
    busy: int = 0
    terminating: bool = False
    removed: float | None = None
    cpu_sample: float | None = None  # metrics-server's last sample, as a fraction of the request
    busy_integral: float = 0.0  # busy-slot-seconds, for the CPU model
    integral_at: float = 0.0
    integral_at_scrape: float = 0.0

    def account(self, now: float) -> None:
        self.busy_integral += self.busy * (now - self.integral_at)
        self.integral_at = now

    @property
    def live(self) -> bool:
        return not self.terminating and self.removed is None


@dataclass
class View:
    """What a controller sees when it polls."""

    now: float
    current: int  # spec.replicas
    ready: int
    waiting: int
    active: int
    arrived: int  # bullmq's :id counter
    cpu_ready: list[float]  # samples of the ready pods that have one
    cpu_missing: int  # ready pods without a sample yet
    starting: int


@dataclass
class Run:
    waits: list[float] = field(default_factory=list)
    slo_violation_s: float = 0.0
    actions: int = 0
    pod_seconds: float = 0.0
    series: list[tuple[float, int, int]] = field(default_factory=list)  # t, spec.replicas, waiting


class Cluster:
    """A pool's pods, their job slots and the FIFO queue, simulated event by event."""

    def __init__(self, workload: Workload, jobs: list[Job]) -> None:
        self.w = workload
        self.jobs = jobs
        self.next_job = 0
        self.events: list[tuple[float, int, int, Pod | Job]] = []
        self.tickets = 0
        self.waiting: deque[Job] = deque()
        self.idle: deque[Pod] = deque()  # one entry per free slot
        self.pods: list[Pod] = []
        self.active = 0
        self.arrived = 0
        self.run = Run()

    # -- what the controllers do and see

    def view(self, now: float) -> View:
        live = [p for p in self.pods if p.live]
        ready = [p for p in live if p.ready_at <= now]
        return View(
            now=now,
            current=len(live),
            ready=len(ready),
            waiting=len(self.waiting),
            active=self.active,
            arrived=self.arrived,
            cpu_ready=[p.cpu_sample for p in ready if p.cpu_sample is not None],
            cpu_missing=sum(1 for p in ready if p.cpu_sample is None),
            starting=len(live) - len(ready),
        )

    def start_warm(self, replicas: int) -> None:
        """The pool's initial pods, already up at time 0."""
        for _ in range(replicas):
            pod = Pod(created=0.0, ready_at=0.0)
            self.pods.append(pod)
            for _ in range(self.w.concurrency):
                self._push(0.0, SLOT_READY, pod)

    def scale_to(self, replicas: int, now: float) -> None:
        live = [p for p in self.pods if p.live]
        if replicas == len(live):
            return
        self.run.actions += 1
        for _ in range(replicas - len(live)):
            pod = Pod(created=now, ready_at=now + self.w.startup_s, integral_at=now)
            self.pods.append(pod)
            for _ in range(self.w.concurrency):
                self._push(pod.ready_at, SLOT_READY, pod)
        # The ReplicaSet deletes pods that are not ready first, then the newest.
        doomed = sorted(live, key=lambda p: (p.ready_at <= now, -p.created))[: max(len(live) - replicas, 0)]
        for pod in doomed:
            pod.terminating = True  # SIGTERM: no new jobs, in-flight ones finish
            if pod.busy == 0:
                pod.removed = now

    def scrape(self, now: float) -> None:
        """metrics-server: each running pod's usage averaged over the last window."""
        for pod in self.pods:
            if not pod.live or pod.ready_at > now - METRICS_RESOLUTION_S:
                continue
            pod.account(now)
            busy = (pod.busy_integral - pod.integral_at_scrape) / METRICS_RESOLUTION_S
            pod.integral_at_scrape = pod.busy_integral
            pod.cpu_sample = self.w.cpu_idle + self.w.cpu_per_busy_slot * busy

    # -- time

    def advance(self, until: float) -> None:
        while self.next_job < len(self.jobs) and self.jobs[self.next_job].arrival < until:
            job = self.jobs[self.next_job]
            self._push(job.arrival, ARRIVAL, job)
            self.next_job += 1
        while self.events and self.events[0][0] < until:
            at, _, kind, what = heapq.heappop(self.events)
            if kind == ARRIVAL:
                assert isinstance(what, Job)
                self._arrive(what, at)
            else:
                assert isinstance(what, Pod)
                self._slot_free(what, at, finished=kind == FINISH)
        if self.waiting and until - self.waiting[0].arrival > self.w.slo_wait_s:
            self.run.slo_violation_s += TICK_S

    def finish(self, end: float) -> Run:
        """Close the books: waits of jobs never started, pod time."""
        self.run.waits.extend(end - job.arrival for job in self.waiting)
        self.run.pod_seconds = sum((p.removed if p.removed is not None else end) - p.created for p in self.pods)
        return self.run

    def _push(self, at: float, kind: int, what: Pod | Job) -> None:
        self.tickets += 1
        heapq.heappush(self.events, (at, self.tickets, kind, what))

    def _arrive(self, job: Job, at: float) -> None:
        self.arrived += 1
        while self.idle:
            pod = self.idle.popleft()
            if pod.live:
                self._start(pod, job, at)
                return
        self.waiting.append(job)

    def _slot_free(self, pod: Pod, at: float, finished: bool) -> None:
        if finished:
            pod.account(at)
            pod.busy -= 1
            self.active -= 1
        if pod.removed is not None:
            return
        if pod.terminating:
            if pod.busy == 0:
                pod.removed = at
            return
        if self.waiting:
            self._start(pod, self.waiting.popleft(), at)
        else:
            self.idle.append(pod)

    def _start(self, pod: Pod, job: Job, at: float) -> None:
        self.run.waits.append(at - job.arrival)
        pod.account(at)
        pod.busy += 1
        self.active += 1
        self._push(at + job.service, FINISH, pod)


# -- the policies ------------------------------------------------------------------------


class Controller:
    name: str
    period_s: float

    def desired(self, view: View) -> int:
        raise NotImplementedError

    def scaled(self, now: float, before: int, after: int) -> None:
        """The replica count was written (after != before)."""


class Ours(Controller):
    """The operator's decision, polled every 5 s (its default pollingInterval).

    ``ours`` targets queue depth and CPU, as the CRD's defaults do;
    ``ours-queue`` the queue alone, to compare with KEDA on equal terms.
    """

    period_s = 5.0

    def __init__(self, w: Workload, *, cpu: bool) -> None:
        self.name = "ours" if cpu else "ours-queue"
        self.concurrency = w.concurrency
        self.policy = ScalingPolicy(
            min_replicas=w.min_replicas,
            max_replicas=w.max_replicas,
            target_queue_depth_per_replica=w.target_queue_depth,
            target_cpu_utilization_percentage=w.target_cpu_percent if cpu else None,
            forecast_horizon_seconds=w.startup_s + self.period_s,
        )
        self.history = History()

    def desired(self, view: View) -> int:
        cpu = CpuSample(
            utilization=statistics.fmean(view.cpu_ready) if view.cpu_ready else 0.0,
            ready_pods=len(view.cpu_ready),
            unaccounted_pods=view.cpu_missing + view.starting,
        )
        queue = QueueCounts(view.waiting, 0, 0, 0, view.active, added_total=view.arrived)
        observation = Observation(view.current, view.ready, self.concurrency, queue=queue, cpu=cpu)
        decision = decide(self.policy, observation, self.history, view.now)
        self.history = decision.history
        return decision.desired_replicas

    def scaled(self, now: float, before: int, after: int) -> None:
        self.history = self.history.scaled(now, before, after)


class Hpa(Controller):
    """The HPA's normalization (autoscaling/v2 defaults), from horizontal.go.

    Stabilization: the lowest recommendation of the last 0 s on the way up,
    the highest of the last 300 s on the way down; rate limits: up by
    max(4 pods, 100%) per 15 s, down by 100% per 15 s; then [min, max].
    """

    period_s = 15.0  # --horizontal-pod-autoscaler-sync-period
    tolerance = 0.1
    scale_down_window_s = 300.0
    rule_period_s = 15.0

    def __init__(self, w: Workload) -> None:
        self.w = w
        self.recommendations: list[tuple[float, int]] = []
        self.events: list[tuple[float, int]] = []

    def raw(self, view: View) -> int | None:
        raise NotImplementedError

    def desired(self, view: View) -> int:
        current = view.current
        if current > self.w.max_replicas:
            return self.w.max_replicas
        if current < self.w.min_replicas:
            return self.w.min_replicas
        raw = self.raw(view)
        if raw is None:  # no metrics: the HPA leaves the scale alone
            return current
        now = view.now
        window = [r for t, r in self.recommendations if t > now - self.scale_down_window_s]
        self.recommendations = [*((t, r) for t, r in self.recommendations if t > now - self.scale_down_window_s)]
        self.recommendations.append((now, raw))
        # The scale-up window is 0 s: only the scale-down side is stabilized.
        stabilized = min(max(current, raw), max([raw, *window]))
        recent = [change for t, change in self.events if t > now - self.rule_period_s]
        start = current - sum(c for c in recent if c > 0) - sum(c for c in recent if c < 0)
        if stabilized > current:
            limit = max(start + 4, math.ceil(start * 2.0), current)  # Pods 4 or Percent 100, the larger
            return min(stabilized, limit, self.w.max_replicas)
        if stabilized < current:
            limit = min(0, current)  # Percent 100: start * (1 - 100%)
            return max(stabilized, limit, self.w.min_replicas)
        return stabilized

    def scaled(self, now: float, before: int, after: int) -> None:
        self.events = [(t, c) for t, c in self.events if t > now - self.rule_period_s]
        self.events.append((now, after - before))


class HpaCpu(Hpa):
    """replica_calculator.go's GetResourceReplicas on CPU utilisation."""

    name = "hpa-cpu"

    def raw(self, view: View) -> int | None:
        if not view.cpu_ready:
            return None
        target = self.w.target_cpu_percent / 100
        ready = len(view.cpu_ready)
        ratio = statistics.fmean(view.cpu_ready) / target
        unready, missing = view.starting, view.cpu_missing
        scale_up_with_unready = unready > 0 and ratio > 1
        if not scale_up_with_unready and missing == 0:
            if abs(1 - ratio) <= self.tolerance:
                return view.current
            return math.ceil(ratio * ready)
        usage = list(view.cpu_ready)
        if missing:
            usage += [max(1.0, target) if ratio < 1 else 0.0] * missing
        if scale_up_with_unready:
            usage += [0.0] * unready
        new_ratio = statistics.fmean(usage) / target
        if abs(1 - new_ratio) <= self.tolerance or (ratio < 1 < new_ratio) or (ratio > 1 > new_ratio):
            return view.current
        replicas = math.ceil(new_ratio * len(usage))
        if (new_ratio < 1 and replicas > view.current) or (new_ratio > 1 and replicas < view.current):
            return view.current
        return replicas


class Keda(Hpa):
    """KEDA: an external metric with an AverageValue target, scaled by the HPA."""

    def __init__(self, w: Workload, *, waiting_only: bool) -> None:
        super().__init__(w)
        self.waiting_only = waiting_only
        self.name = "keda-list" if waiting_only else "keda"

    def raw(self, view: View) -> int | None:
        metric = view.waiting if self.waiting_only else view.waiting + view.active
        target = self.w.target_queue_depth
        ratio = metric / (target * max(view.current, 1))
        if abs(1 - ratio) <= self.tolerance:
            return view.current
        return math.ceil(metric / target)


def controllers(w: Workload) -> list[Controller]:
    return [Ours(w, cpu=True), Ours(w, cpu=False), HpaCpu(w), Keda(w, waiting_only=False), Keda(w, waiting_only=True)]


# -- running and reporting ------------------------------------------------------------


def simulate(w: Workload, jobs: list[Job], initial: int, controller: Controller, duration: float) -> Run:
    cluster = Cluster(w, jobs)
    cluster.start_warm(initial)
    now = 0.0
    ticks_per_poll = round(controller.period_s / TICK_S)
    ticks_per_scrape = round(METRICS_RESOLUTION_S / TICK_S)
    tick = 0
    while now < duration:
        until = now + TICK_S
        cluster.advance(until)
        now = until
        tick += 1
        if tick % ticks_per_scrape == 0:
            cluster.scrape(now)
        if tick % ticks_per_poll == 0:
            view = cluster.view(now)
            desired = controller.desired(view)
            if desired != view.current:
                cluster.scale_to(desired, now)
                controller.scaled(now, view.current, desired)
        if tick % 10 == 0:
            cluster.run.series.append((now, cluster.view(now).current, len(cluster.waiting)))
    return cluster.finish(duration)


@dataclass(frozen=True)
class Row:
    trace: str
    policy: str
    jobs: int
    p50: float
    p99: float
    slo_violation_s: float
    pod_hours: float
    actions: int


def summarize(trace: str, policy: str, run: Run) -> Row:
    waits = sorted(run.waits)
    return Row(
        trace=trace,
        policy=policy,
        jobs=len(waits),
        p50=waits[len(waits) // 2],
        p99=waits[min(len(waits) - 1, math.ceil(0.99 * len(waits)) - 1)],
        slo_violation_s=run.slo_violation_s,
        pod_hours=run.pod_seconds / 3600,
        actions=run.actions,
    )


def ratio(ours: float, theirs: float) -> str:
    if theirs == 0:
        return "  =  " if ours == 0 else "  inf"
    return f"{ours / theirs:5.2f}"


def print_report(rows: list[Row], w: Workload) -> None:
    print(
        f"workload: service {w.service_mean_s:g}s mean (lognormal sigma {w.service_sigma:g}), concurrency"
        f" {w.concurrency}, pod start-up {w.startup_s:g}s, replicas {w.min_replicas}..{w.max_replicas},"
        f" target {w.target_queue_depth} jobs/replica or {w.target_cpu_percent}% CPU, SLO: wait <= {w.slo_wait_s:g}s"
    )
    header = (
        f"{'trace':<11} {'policy':<10} {'jobs':>6} {'wait p50':>9} {'wait p99':>9}"
        f" {'SLO viol':>9} {'pod-h':>7} {'scales':>7}"
    )
    print(header)
    print("-" * len(header))
    for row in rows:
        print(
            f"{row.trace:<11} {row.policy:<10} {row.jobs:>6} {row.p50:>8.1f}s {row.p99:>8.1f}s"
            f" {row.slo_violation_s:>8.0f}s {row.pod_hours:>7.2f} {row.actions:>7}"
        )
    print()
    print("ratios, ours / baseline (below 1: ours waits less, uses fewer pods, scales less often)")
    header = f"{'trace':<11} {'ours':<10} {'baseline':<10} {'wait p99':>9} {'SLO viol':>9} {'pod-h':>7} {'scales':>7}"
    print(header)
    print("-" * len(header))
    by_key = {(r.trace, r.policy): r for r in rows}
    comparisons = [("ours", "hpa-cpu"), ("ours", "keda"), ("ours", "keda-list"), ("ours-queue", "keda")]
    for trace in dict.fromkeys(r.trace for r in rows):
        for mine, policy in comparisons:
            ours, base = by_key[(trace, mine)], by_key[(trace, policy)]
            print(
                f"{trace:<11} {mine:<10} {policy:<10} {ratio(ours.p99, base.p99):>9}"
                f" {ratio(ours.slo_violation_s, base.slo_violation_s):>9}"
                f" {ratio(ours.pod_hours, base.pod_hours):>7} {ratio(ours.actions, base.actions):>7}"
            )


COLORS = {
    "ours": "tab:green",
    "ours-queue": "tab:olive",
    "hpa-cpu": "tab:red",
    "keda": "tab:blue",
    "keda-list": "tab:purple",
}


def plot(runs: dict[str, dict[str, Run]], rates: dict[str, RateFn], w: Workload, duration: float, path: Path) -> None:
    fig, axes = plt.subplots(len(runs), 2, figsize=(14, 3.2 * len(runs)), sharex=True)
    minutes = [t / 60 for t in range(0, int(duration), 10)]
    for row, (trace, by_policy) in enumerate(runs.items()):
        needed = [rates[trace](t) * w.service_mean_s / w.concurrency for t in range(0, int(duration), 10)]
        left, right = axes[row]
        left.plot(minutes, needed, color="0.6", lw=1, ls="--", label="load (arrivals x service / concurrency)")
        # Ours last and thicker, so the baselines do not hide it.
        for policy, run in sorted(by_policy.items(), key=lambda item: item[0].startswith("ours")):
            t = [s[0] / 60 for s in run.series]
            width = 2.0 if policy.startswith("ours") else 1.0
            left.step(t, [s[1] for s in run.series], where="post", color=COLORS[policy], lw=width, label=policy)
            right.plot(t, [s[2] for s in run.series], color=COLORS[policy], lw=width, label=policy)
        left.set_ylabel(f"{trace}\nreplicas")
        right.set_ylabel("jobs waiting")
        right.set_yscale("symlog", linthresh=10)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper center", ncol=len(labels), fontsize=8, bbox_to_anchor=(0.5, 0.985))
    axes[-1][0].set_xlabel("minutes")
    axes[-1][1].set_xlabel("minutes")
    fig.suptitle("Autoscaling a crew pool: replicas (left) and jobs waiting (right) per policy", y=0.998)
    fig.tight_layout(rect=(0, 0, 1, 0.965))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=72)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hours", type=float, default=2.0, help="simulated time per trace")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--plot", type=Path, default=DEFAULT_PLOT)
    args = parser.parse_args()
    duration = args.hours * 3600
    started = time.perf_counter()
    rates = traces(duration, args.seed)
    rows: list[Row] = []
    runs: dict[str, dict[str, Run]] = {}
    for index, (trace, rate) in enumerate(rates.items()):
        jobs = jobs_for(rate, duration, args.seed * 1000 + index, WORKLOAD)
        # Every policy starts at the size the opening load needs, so a
        # cold start does not dominate the steady traces.
        initial = min(
            max(math.ceil(rate(0) * WORKLOAD.service_mean_s / WORKLOAD.concurrency), 1), WORKLOAD.max_replicas
        )
        runs[trace] = {}
        for controller in controllers(WORKLOAD):
            run = simulate(WORKLOAD, jobs, initial, controller, duration)
            runs[trace][controller.name] = run
            rows.append(summarize(trace, controller.name, run))
    print_report(rows, WORKLOAD)
    plot(runs, rates, WORKLOAD, duration, args.plot)
    print(f"\nplot: {args.plot}  ({time.perf_counter() - started:.1f}s, seed {args.seed})")


if __name__ == "__main__":
    main()
