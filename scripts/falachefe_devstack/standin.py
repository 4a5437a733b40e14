"""A kubelet stand-in: runs the pods of the local control plane as local processes.

The local stack has no kubelet, so pods are created by the ReplicaSet
controller but never run. For the demo (and end-to-end tests) this module
plays the kubelet's part for the pods it is told to watch:

- every pod matching the label selector gets a local process running the
  pod's first container command, with its environment resolved the way the
  kubelet would (literal values, ``secretKeyRef``, ``configMapKeyRef``) and
  its ConfigMap volumes materialised into a local directory;
- when the process answers its readiness probe, the pod's status is patched
  to Running/Ready, so the ReplicaSet, the Deployment and the operator see
  real readiness through the real controllers;
- when the pod is deleted (scale-down), the process gets SIGTERM and the
  grace period the pod spec asks for, exactly like a container;
- a process that exits is restarted with the kubelet's back-off;
- given a :class:`~falachefe_devstack.metrics_standin.MetricsServerStandIn`,
  it reports the CPU each process really uses (from ``/proc``), as the
  kubelet's cAdvisor would to metrics-server.

Every process it starts is labelled as a stand-in in its log file name and
in the pod's status message, so nobody mistakes it for a real kubelet.
"""

from __future__ import annotations

import base64
import contextlib
import logging
import os
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from kubernetes import client as k8s
from kubernetes.client.rest import ApiException

from .metrics_standin import MetricsServerStandIn
from .process import cpu_seconds, free_port, http_ok, program_path

log = logging.getLogger("falachefe.standin")

#: CPU usage is averaged over this window, like metrics-server's 15 s default.
CPU_WINDOW_S = 15.0

STANDIN_MESSAGE = "running as a local process by the demo's kubelet stand-in"


def _now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


@dataclass
class StandInPod:
    """One pod and the local process playing its container."""

    name: str
    uid: str
    labels: dict[str, str]
    process: subprocess.Popen[bytes]
    health_port: int
    log_path: Path
    grace_seconds: float
    argv: list[str]
    env: dict[str, str]
    start_time: str = field(default_factory=_now_iso)
    ready_reported: bool | None = None
    stopping_since: float | None = None
    restarts: int = 0
    restart_at: float | None = None
    #: (monotonic time, CPU seconds used) samples of the last CPU_WINDOW_S.
    cpu_samples: list[tuple[float, float]] = field(default_factory=list)


class KubeletStandIn:
    """Keeps one local process per pod for the pods matching ``selector`` in ``namespace``."""

    def __init__(
        self,
        api: k8s.ApiClient,
        namespace: str,
        selector: str,
        workdir: Path,
        *,
        extra_env: dict[str, str] | None = None,
        interval: float = 0.5,
        metrics: MetricsServerStandIn | None = None,
    ) -> None:
        self.core = k8s.CoreV1Api(api)
        self.namespace = namespace
        self.selector = selector
        self.workdir = workdir
        self.extra_env = extra_env or {}
        self.interval = interval
        self.metrics = metrics
        self.pods: dict[str, StandInPod] = {}
        self.terminating: list[StandInPod] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- lifecycle ---------------------------------------------------------------

    def start(self) -> KubeletStandIn:
        self._thread = threading.Thread(target=self._loop, name="kubelet-standin", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop watching, then terminate every process gracefully."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        for pod in list(self.pods.values()):
            self._terminate(pod)
        self.pods.clear()
        deadline = time.monotonic() + max((p.grace_seconds for p in self.terminating), default=0)
        for pod in self.terminating:
            remaining = max(0.1, deadline - time.monotonic())
            try:
                pod.process.wait(remaining)
            except subprocess.TimeoutExpired:
                pod.process.kill()
                pod.process.wait()
        self.terminating.clear()

    # -- the loop ------------------------------------------------------------------

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.sync_once()
            except Exception:  # the stand-in must outlive a flaky API call
                log.exception("kubelet stand-in sync failed")
            self._stop.wait(self.interval)

    def sync_once(self) -> None:
        pods = self.core.list_namespaced_pod(self.namespace, label_selector=self.selector).items
        live = {pod.metadata.name: pod for pod in pods if pod.metadata.deletion_timestamp is None}
        for name in list(self.pods):
            if name not in live or live[name].metadata.uid != self.pods[name].uid:
                self._terminate(self.pods.pop(name))
        for name, pod in live.items():
            if name not in self.pods:
                self.pods[name] = self._start_pod(pod)
        for standin in self.pods.values():
            self._restart_if_crashed(standin)
            self._report(standin)
            self._report_cpu(standin)
        self._reap_terminated()

    # -- pods -> processes ---------------------------------------------------------------

    def _start_pod(self, pod: k8s.V1Pod) -> StandInPod:
        container = pod.spec.containers[0]
        pod_dir = self.workdir / pod.metadata.name
        mounts = self._materialise_volumes(pod, container, pod_dir)
        env = {key: value for key, value in os.environ.items() if not key.startswith("FALACHEFE_")}
        for var in container.env or []:
            value = self._resolve_env(var)
            if value is not None:
                env[var.name] = _rewrite_paths(value, mounts)
        health_port, metrics_port = free_port(), free_port()
        env.update(self.extra_env)
        env["FALACHEFE_OBSERVABILITY__HEALTH_PORT"] = str(health_port)
        env["FALACHEFE_OBSERVABILITY__METRICS_PORT"] = str(metrics_port)
        env["HOME"] = str(pod_dir / "home")
        env["TMPDIR"] = str(pod_dir / "tmp")
        for directory in (pod_dir / "home", pod_dir / "tmp"):
            directory.mkdir(parents=True, exist_ok=True)
        argv = [*(container.command or []), *(container.args or [])]
        argv[0] = program_path(argv[0])
        log_path = self.workdir / f"{pod.metadata.name}.standin.log"
        grace = float(pod.spec.termination_grace_period_seconds or 30)
        standin = StandInPod(
            name=pod.metadata.name,
            uid=pod.metadata.uid,
            labels=dict(pod.metadata.labels or {}),
            process=_launch(argv, env, log_path),
            health_port=health_port,
            log_path=log_path,
            grace_seconds=grace,
            argv=argv,
            env=env,
        )
        log.info("started %s as pid %d", standin.name, standin.process.pid)
        return standin

    def _restart_if_crashed(self, standin: StandInPod) -> None:
        """restartPolicy Always, with the kubelet's back-off (10 s doubling, capped at 5 min)."""
        if standin.process.poll() is None:
            return
        now = time.monotonic()
        if standin.restart_at is None:
            backoff = min(10.0 * 2**standin.restarts, 300.0)
            standin.restart_at = now + backoff
            log.warning(
                "%s exited with %s; restarting in %.0fs (see %s)",
                standin.name,
                standin.process.returncode,
                backoff,
                standin.log_path,
            )
        elif now >= standin.restart_at:
            standin.restarts += 1
            standin.restart_at = None
            standin.process = _launch(standin.argv, standin.env, standin.log_path)

    def _materialise_volumes(self, pod: k8s.V1Pod, container: k8s.V1Container, pod_dir: Path) -> dict[str, Path]:
        """Write each ConfigMap volume to a local directory; map mount path -> directory."""
        volumes = {volume.name: volume for volume in pod.spec.volumes or []}
        mounts: dict[str, Path] = {}
        for mount in container.volume_mounts or []:
            volume = volumes.get(mount.name)
            local = pod_dir / "volumes" / mount.name
            local.mkdir(parents=True, exist_ok=True)
            if volume is not None and volume.config_map is not None:
                config_map = self.core.read_namespaced_config_map(volume.config_map.name, self.namespace)
                for key, value in (config_map.data or {}).items():
                    (local / key).write_text(value)
            mounts[mount.mount_path.rstrip("/")] = local
        return mounts

    def _resolve_env(self, var: k8s.V1EnvVar) -> str | None:
        if var.value_from is None:
            return str(var.value) if var.value is not None else ""
        source = var.value_from
        try:
            if source.secret_key_ref is not None:
                ref = source.secret_key_ref
                secret = self.core.read_namespaced_secret(ref.name, self.namespace)
                raw = (secret.data or {}).get(ref.key)
                return base64.b64decode(raw).decode() if raw is not None else None
            if source.config_map_key_ref is not None:
                ref = source.config_map_key_ref
                config_map = self.core.read_namespaced_config_map(ref.name, self.namespace)
                return (config_map.data or {}).get(ref.key)
        except ApiException as error:
            if error.status == 404 and getattr(source.secret_key_ref or source.config_map_key_ref, "optional", False):
                return None
            raise
        return None

    # -- status ----------------------------------------------------------------------

    def _report(self, standin: StandInPod) -> None:
        """Patch the pod's status to what the process is doing, as a kubelet would."""
        alive = standin.process.poll() is None
        ready = alive and http_ok(f"http://127.0.0.1:{standin.health_port}/readyz", timeout=0.5)
        if ready == standin.ready_reported:
            return
        now = _now_iso()
        # A crashed container is restarted, not given up on: the pod stays Running, not Ready.
        status: dict[str, Any] = {
            "phase": "Running",
            "message": STANDIN_MESSAGE,
            "hostIP": "127.0.0.1",
            "podIP": "127.0.0.1",
            "startTime": standin.start_time,
            "conditions": [
                {"type": "PodScheduled", "status": "True", "lastTransitionTime": now},
                {"type": "Initialized", "status": "True", "lastTransitionTime": now},
                {"type": "ContainersReady", "status": str(ready), "lastTransitionTime": now},
                {"type": "Ready", "status": str(ready), "lastTransitionTime": now},
            ],
        }
        with contextlib.suppress(ApiException):
            self.core.patch_namespaced_pod_status(standin.name, self.namespace, {"status": status})
            standin.ready_reported = ready

    def _report_cpu(self, standin: StandInPod) -> None:
        if self.metrics is None:
            return
        try:
            used = cpu_seconds(standin.process.pid)
        except OSError:  # exited since the last look
            return
        now = time.monotonic()
        standin.cpu_samples = [(t, c) for t, c in standin.cpu_samples if now - t <= CPU_WINDOW_S] + [(now, used)]
        (first_t, first_c), (last_t, last_c) = standin.cpu_samples[0], standin.cpu_samples[-1]
        if last_t - first_t < 1.0:
            return
        millicores = max(0, round((last_c - first_c) / (last_t - first_t) * 1000))
        self.metrics.set_usage(self.namespace, standin.name, standin.labels, f"{millicores}m")

    # -- termination -----------------------------------------------------------------

    def _terminate(self, standin: StandInPod) -> None:
        if self.metrics is not None:
            self.metrics.forget(self.namespace, standin.name)
        if standin.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(standin.process.pid, signal.SIGTERM)
            standin.stopping_since = time.monotonic()
            log.info("SIGTERM %s (pid %d), grace %.0fs", standin.name, standin.process.pid, standin.grace_seconds)
            self.terminating.append(standin)

    def _reap_terminated(self) -> None:
        still: list[StandInPod] = []
        for standin in self.terminating:
            if standin.process.poll() is not None:
                continue
            if standin.stopping_since is not None and time.monotonic() - standin.stopping_since > standin.grace_seconds:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(standin.process.pid, signal.SIGKILL)
                continue
            still.append(standin)
        self.terminating = still


def _launch(argv: list[str], env: dict[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    with log_path.open("ab") as out:
        return subprocess.Popen(
            argv, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
        )


def _rewrite_paths(value: str, mounts: dict[str, Path]) -> str:
    for mount_path, local in mounts.items():
        if value == mount_path or value.startswith(mount_path + "/"):
            return str(local) + value[len(mount_path) :]
    return value
