"""``falachefe-operator``: run the operator.

    falachefe-operator [--all-namespaces | --namespace NS ...] [--standalone]
                       [--liveness-port 8080] [--metrics-port 9090]

Without ``--standalone`` the process first wins the leader Lease (standing
by until then). If it ever loses it (not renewed within the renew deadline),
it stops acting at that moment (the per-resource loops are cancelled, so no
reconcile or scale starts after it), then stops altogether (exit 1, so that
Kubernetes restarts it as a candidate). SIGTERM stops it cleanly: the
watches close, the per-resource loops stop, the Lease is released, exit 0.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
import uuid
from typing import Any

import kopf

from falachefe_runtime.observability.logging import configure_logging

from . import gcpolicy, handlers, metrics, naming
from .controller import RESYNC_SECONDS, TICK_SECONDS, Fleet
from .credentials import load_credentials
from .health import Endpoints
from .kubeapi import KubeApi, in_cluster_namespace
from .leader import LeaderElector, LeadershipLost, LeaseConfig
from .podindex import PodIndex
from .scaling.cpu import PodMetricsCache
from .scaling.engine import Autoscaler

log = logging.getLogger("falachefe.operator")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="falachefe-operator",
        description="Reconcile Falachefe resources.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="environment:\n"
        "  KUBECONFIG     the API server and credentials, when not in a pod (see --kubeconfig)\n"
        "  POD_NAME       this replica's name, in the leader Lease (default: the host name)\n"
        "  POD_NAMESPACE  the leader Lease's namespace (see --leader-election-namespace)\n"
        "The workers' settings (FALACHEFE_*) are listed by falachefe-runtime worker --help.",
    )
    scope = parser.add_mutually_exclusive_group()
    scope.add_argument(
        "--namespace", "-n", action="append", default=[], metavar="NS", help="watch this namespace (repeatable)"
    )
    scope.add_argument("--all-namespaces", "-A", action="store_true", help="watch every namespace (the default)")
    parser.add_argument("--standalone", action="store_true", help="no leader election (a single replica, or tests)")
    parser.add_argument("--liveness-port", type=int, default=8080, help="GET /healthz (default 8080)")
    parser.add_argument("--metrics-port", type=int, default=9090, help="GET /metrics (default 9090)")
    parser.add_argument("--kubeconfig", help="default: $KUBECONFIG, the pod's service account, ~/.kube/config")
    parser.add_argument(
        "--leader-election-namespace",
        default=os.environ.get("POD_NAMESPACE") or in_cluster_namespace(),
        help="namespace of the leader Lease (default: $POD_NAMESPACE, or the pod's own)",
    )
    parser.add_argument("--leader-election-id", default="falachefe-operator", help="name of the leader Lease")
    parser.add_argument(
        "--leader-election-lease-duration",
        type=int,
        default=LeaseConfig.lease_duration,
        metavar="SECONDS",
        help="how long standbys wait after the leader's last renewal before taking over (default %(default)s)",
    )
    parser.add_argument(
        "--leader-election-renew-deadline",
        type=float,
        default=LeaseConfig.renew_deadline,
        metavar="SECONDS",
        help="the leader stops acting when it has not renewed for this long (default %(default)s)",
    )
    parser.add_argument(
        "--leader-election-retry-period",
        type=float,
        default=LeaseConfig.retry_period,
        metavar="SECONDS",
        help="time between tries to acquire or renew the Lease (default %(default)s)",
    )
    parser.add_argument(
        "--resync-seconds",
        type=float,
        default=RESYNC_SECONDS,
        help="re-apply every resource's objects this often, +-10%% (default 10 h, as controller-runtime's"
        " SyncPeriod: the watches repair drift as it happens; this is the net under them)",
    )
    parser.add_argument(
        "--gc-freeze",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="freeze what each full garbage collection leaves alive, so the next walks only newer objects,"
        " with a full walk hourly (default on; --no-gc-freeze: CPython's collector as it comes)",
    )
    parser.add_argument(
        "--gc-young-threshold",
        type=int,
        default=gcpolicy.YOUNG_THRESHOLD,
        metavar="ALLOCATIONS",
        help="allocations between young garbage collections (default %(default)s; CPython's own: 700)",
    )
    parser.add_argument(
        "--tick-seconds",
        type=float,
        default=TICK_SECONDS,
        metavar="SECONDS",
        help="timed waits (polls, retries) end on a grid of this step, so the polls falling due together run"
        " in one wake-up; a poll is at most this late (default %(default)s; 0: each on its own)",
    )
    parser.add_argument(
        "--log-format",
        choices=["json", "text"],
        default="json",
        help="json (the default): one object per line; text: the same fields as key=value",
    )
    parser.add_argument("--verbose", "-v", action="store_true")
    args = parser.parse_args(argv)
    if not args.standalone and not args.leader_election_namespace:
        parser.error("leader election needs --leader-election-namespace (or $POD_NAMESPACE), or run --standalone")
    try:
        lease_config(args, identity="")
    except ValueError as error:
        parser.error(f"--leader-election-*: {error}")
    return args


def lease_config(args: argparse.Namespace, *, identity: str) -> LeaseConfig:
    return LeaseConfig(
        namespace=args.leader_election_namespace or "",
        name=args.leader_election_id,
        identity=identity,
        lease_duration=args.leader_election_lease_duration,
        renew_deadline=args.leader_election_renew_deadline,
        retry_period=args.leader_election_retry_period,
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # The workers' log schema, for Kopf's records as for ours (not kopf.configure's formats).
    configure_logging("DEBUG" if args.verbose else "INFO", args.log_format)
    if not args.verbose:
        # Kopf logs every watch event's handler at INFO; the controllers log what they do.
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
        # asyncio's debug chatter, as kopf.configure silences it.
        logging.getLogger("asyncio").setLevel(logging.WARNING)
    return asyncio.run(run(args))


async def run(args: argparse.Namespace) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)

    # The pod's name says which replica leads; the suffix tells a restarted container from its predecessor.
    identity = f"{os.environ.get('POD_NAME') or socket.gethostname()}_{uuid.uuid4().hex[:8]}"
    credentials = load_credentials(args.kubeconfig)
    api = KubeApi(credentials)
    elector = None if args.standalone else LeaderElector(credentials, lease_config(args, identity=identity))
    state = Acting(identity)
    endpoints = Endpoints(liveness_port=args.liveness_port, metrics_port=args.metrics_port, describe=state.describe)
    await endpoints.start()
    # Worker pods from a watch, pod metrics once per interval for the whole
    # scope: the autoscaler sends no request per pool per poll for CPU.
    pods = PodIndex()
    scaler = Autoscaler(
        api,
        pods=pods,
        pod_metrics=PodMetricsCache(api, all_namespaces=not args.namespace, selector=naming.MANAGED_SELECTOR),
    )
    fleet = Fleet(api, scaler, resync_seconds=args.resync_seconds, tick_seconds=args.tick_seconds)
    gcpolicy.install(freeze=args.gc_freeze, young_threshold=args.gc_young_threshold)
    walks = asyncio.create_task(gcpolicy.keep_frozen()) if args.gc_freeze else None
    exit_code = 0
    try:
        if elector is not None and not await elector.acquire(stop):
            return 0
        exit_code = await _operate(
            args,
            fleet=fleet,
            pods=pods,
            state=state,
            api=api,
            identity=identity,
            stop=stop,
            elector=elector,
        )
    finally:
        if walks is not None:
            walks.cancel()
        await fleet.stop()
        state.set(False)
        await scaler.aclose()
        if elector is not None:
            await elector.release()
            await elector.aclose()
        await api.close()
        await endpoints.stop()
    return exit_code


class Acting:
    """Whether this replica acts (reconciles and scales): /healthz's ``leader`` and the leader gauge.

    Set true just before the per-resource loops may start and false just
    after they are stopped, so both say what the replica does, not what it
    hopes.
    """

    def __init__(self, identity: str) -> None:
        self.identity = identity
        self.leader = False

    def set(self, acting: bool) -> None:
        self.leader = acting
        metrics.LEADER.set(int(acting))

    def describe(self) -> dict[str, Any]:
        return {"leader": self.leader, "identity": self.identity}


async def _operate(
    args: argparse.Namespace,
    *,
    fleet: Fleet,
    pods: PodIndex,
    state: Acting,
    api: KubeApi,
    identity: str,
    stop: asyncio.Event,
    elector: LeaderElector | None,
) -> int:
    """Run Kopf until a signal, a stop request, or the loss of the Lease."""
    kopf_stop = asyncio.Event()
    lost: list[LeadershipLost] = []

    # Created before Kopf starts, so Kopf's shutdown leaves these tasks to us.
    async def hold_lease() -> None:
        if elector is None:
            return
        try:
            await elector.hold()
        except LeadershipLost as error:
            # Stop acting first, at once: Kopf's own shutdown takes seconds,
            # and a standby may lead once the lease duration has passed.
            await fleet.stop()
            state.set(False)
            log.error("stopped leading: %s", error)
            lost.append(error)
            kopf_stop.set()

    async def forward_stop() -> None:
        await stop.wait()
        kopf_stop.set()

    background = [asyncio.create_task(hold_lease()), asyncio.create_task(forward_stop())]
    state.set(True)
    try:
        await kopf.operator(
            registry=handlers.build_registry(fleet, api, kopf_stop, pods, clusterwide=not args.namespace),
            settings=handlers.operator_settings(identity=identity, clusterwide=not args.namespace),
            clusterwide=not args.namespace,
            namespaces=args.namespace,
            standalone=True,
            stop_flag=kopf_stop,
        )
    finally:
        for task in background:
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(*background, return_exceptions=True)
    return 1 if lost else 0


if __name__ == "__main__":
    sys.exit(main())
