"""Two operator processes, one leader; the leader's API connection hangs: never two leaders at once.

Each ``falachefe-operator`` runs as the chart's identity with the default
leader election (15 s lease, 10 s renew deadline, 2 s retry period), and
reaches the real API server through a TCP proxy of its own. The test makes
the leader's proxy hang: its renewals, reconciles and scales get no answer,
while its process and its event loop are fine, which is when a leader is
tempted to carry on.

Whether each one acts is sampled every 50 ms from outside, on its
``/healthz`` (``leader`` is true exactly while its per-resource loops may
run), and the standby's acting is checked on the API server: it reconciles
a change to the resource after taking over.
"""

from __future__ import annotations

import itertools
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from kubernetes import client as k8s
from opkit import Operator, apply, create_secrets, get, sample

from falachefe_devstack.kube import ControlPlane
from falachefe_devstack.tcp_proxy import HangingProxy
from falachefe_devstack.waiting import wait_for

pytestmark = pytest.mark.slow

RENEW_DEADLINE = 10.0
SAMPLE_SECONDS = 0.05


def kubeconfig_through(proxy: HangingProxy, kubeconfig: Path, path: Path) -> Path:
    """A copy of ``kubeconfig`` whose server is the proxy (the apiserver's certificate names 127.0.0.1)."""
    config = json.loads(kubeconfig.read_text())
    for cluster in config["clusters"]:
        cluster["cluster"]["server"] = f"https://127.0.0.1:{proxy.port}"
    path.write_text(json.dumps(config))
    path.chmod(0o600)
    return path


@dataclass(frozen=True)
class Sample:
    at: float
    acting: tuple[bool, ...]


class ActingSampler:
    """Records, every 50 ms, which operators say they act; an unanswered probe keeps the last answer."""

    def __init__(self, operators: list[Operator]) -> None:
        self.operators = operators
        self.samples: list[Sample] = []
        self._last = [False] * len(operators)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="acting-sampler", daemon=True)

    def __enter__(self) -> ActingSampler:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(5)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.samples.append(Sample(time.monotonic(), tuple(self._acting(i) for i in range(len(self.operators)))))
            self._stop.wait(SAMPLE_SECONDS)

    def _acting(self, index: int) -> bool:
        operator = self.operators[index]
        if operator.process is None or not operator.process.running():
            self._last[index] = False  # a process that exited acts no more
            return False
        health = operator.health()
        if health is not None:  # an operator that does not answer is taken at its last word
            self._last[index] = bool(health["leader"])
        return self._last[index]

    def last_acting(self, index: int) -> float | None:
        return max((s.at for s in self.samples if s.acting[index]), default=None)

    def first_acting(self, index: int) -> float | None:
        return min((s.at for s in self.samples if s.acting[index]), default=None)

    def overlap_seconds(self) -> float:
        """How long two or more operators acted at once: each such sample counts until the next one."""
        pairs = itertools.pairwise(self.samples)
        return sum(later.at - sample.at for sample, later in pairs if sum(sample.acting) > 1)


@pytest.fixture
def proxies(kube: ControlPlane) -> Iterator[list[HangingProxy]]:
    started = [HangingProxy("127.0.0.1", kube.apiserver_port, name=f"proxy-{i}") for i in range(2)]
    for proxy in started:
        proxy.start()
    yield started
    for proxy in started:
        proxy.stop()


def test_a_leader_whose_api_connection_hangs_stops_before_the_standby_leads(
    kube: ControlPlane,
    kube_api: k8s.ApiClient,
    op_namespace: str,
    operator_kubeconfig: Path,
    op_workdir: Path,
    proxies: list[HangingProxy],
    redis_url: str,
) -> None:
    operators = [
        Operator(
            kubeconfig_through(proxy, operator_kubeconfig, op_workdir / f"operator-{name}.kubeconfig"),
            op_namespace,
            op_workdir,
            name=f"operator-{name}",
        )
        for name, proxy in zip("ab", proxies, strict=True)
    ]
    first, second = operators
    try:
        first.start()
        wait_for(lambda: (first.health() or {}).get("leader"), timeout=30, what="the first operator leads")
        second.start()
        create_secrets(kube_api, op_namespace, "failover", redis_url)
        apply(kube, sample("failover", op_namespace))
        wait_for(
            lambda: (get(kube_api, op_namespace, "failover").get("status") or {}).get("observedGeneration") == 1,
            timeout=60,
            what="the leader reconciled the resource",
        )
        assert (second.health() or {}).get("leader") is False

        with ActingSampler(operators) as sampler:
            time.sleep(1)
            proxies[0].hang()
            hung_at = time.monotonic()
            wait_for(lambda: sampler.first_acting(1), timeout=60, what="the standby leads")
            assert first.process is not None
            wait_for(lambda: not first.process.running(), timeout=30, what="the old leader exits")  # type: ignore[union-attr]
            time.sleep(1)
        first_exit = first.process.popen.returncode if first.process.popen else None
        # The new leader acts on the API server: it reconciles a change made after it took over.
        apply(kube, sample("failover", op_namespace, image="falachefe:1.1"))
        wait_for(
            lambda: (get(kube_api, op_namespace, "failover").get("status") or {}).get("observedGeneration") == 2,
            timeout=60,
            what="the new leader reconciled the change",
        )
    finally:
        for operator in operators:
            operator.stop()

    stopped, started = sampler.last_acting(0), sampler.first_acting(1)
    assert stopped is not None and started is not None
    print(
        f"\nold leader stopped acting {stopped - hung_at:.2f}s after its connection hung;"
        f" the standby acted {started - hung_at:.2f}s after it; two leaders for {sampler.overlap_seconds():.2f}s"
    )
    assert sampler.overlap_seconds() == 0, f"two operators acted at once for {sampler.overlap_seconds():.2f}s"
    # It stopped within the renew deadline of its last renewal, which began before the hang.
    # The slack is the probes': the last "leader" answer is kept while the next is late, and
    # a loaded machine answered 1.7 s late once (a full run beside two benchmarks). The
    # standby cannot lead before the lease duration (15 s), which the two asserts above hold.
    assert stopped - hung_at <= RENEW_DEADLINE + 2.5
    assert started > stopped
    # It stopped acting, then stopped for good (exit 1: Kubernetes restarts it as a candidate).
    assert first_exit == 1, first.log()[-3000:]
    assert "stopped leading" in first.log()
