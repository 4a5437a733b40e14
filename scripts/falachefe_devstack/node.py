"""A real Kubernetes node on this machine: containerd, runc, CNI, kubelet, kube-proxy, metrics-server.

Pods really run here, from images built on this machine (:mod:`.images`).
The node lives in namespaces of its own (see :mod:`.node_init`): a PID
namespace whose init dies with the process that started the node, a mount
namespace holding every mount the node makes, and a network namespace with
the node's bridge, pods and iptables rules. One veth pair links it to the
host:

    host                                   node (its own network namespace)
    fcnode<slot>  10.210.<slot>.1/30  <->  uplink  10.210.<slot>.2/30
                                           cni0    10.211.<slot>.1/24  (pods)

The control plane, PostgreSQL, Redis and the LLM stand-in listen on the host
end (and loopback); pods reach them there, and the apiserver reaches the
kubelet and metrics-server at the node end. The host routes the pod range
through the link. Nothing else is reachable from the node: a rule in the
node's namespace refuses anything leaving the link for another address.

Each node takes a numbered slot, held by a file lock for its lifetime, which
picks its addresses and its containerd image store under
``$FALACHEFE_DEV_CACHE/node/slot-<n>`` (images stay imported between runs).
Starting a slot first clears what a killed run may have left in it:
containers in the image store and empty cgroups.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from .kube import KUBE_PROXY_USER, NODE_NAME, ControlPlane, https_ok, node_user
from .process import ManagedProcess, StartupError, http_ok
from .toolchain import Toolchain, cache_root, log

MAX_SLOTS = 32
CRI_NAMESPACE = "k8s.io"
CONTAINERD_SOCKET = "/run/containerd/containerd.sock"
CNI_BIN_DIR = "/usr/lib/cni"
CGROUP_ROOT = Path("/sys/fs/cgroup")
REQUIRED_COMMANDS = ("containerd", "runc", "ctr", "iptables", "conntrack", "nsenter", "unshare", "ip", "mount")


@dataclass(frozen=True)
class NodeNetwork:
    """The addresses of the node in ``slot``."""

    slot: int

    @property
    def host_interface(self) -> str:
        return f"fcnode{self.slot}"

    @property
    def host_address(self) -> str:
        return f"10.210.{self.slot}.1"

    @property
    def node_address(self) -> str:
        return f"10.210.{self.slot}.2"

    @property
    def pod_cidr(self) -> str:
        return f"10.211.{self.slot}.0/24"

    @property
    def pod_gateway(self) -> str:
        return f"10.211.{self.slot}.1"


class NodeSlot:
    """A numbered slot, held with a file lock for as long as its node runs."""

    def __init__(self, number: int, lock: IO[str]) -> None:
        self.number = number
        self.network = NodeNetwork(number)
        self._lock = lock

    @property
    def directory(self) -> Path:
        return cache_root() / "node" / f"slot-{self.number}"

    @property
    def cgroup_root(self) -> str:
        """The kubelet's cgroup root (cgroupfs driver): one per slot, so nodes never share one."""
        return f"/falachefe-node{self.number}"

    @classmethod
    def acquire(cls) -> NodeSlot:
        directory = cache_root() / "node"
        directory.mkdir(parents=True, exist_ok=True)
        for number in range(MAX_SLOTS):
            lock = open(directory / f"slot-{number}.lock", "a+")  # noqa: SIM115 - held for the node's lifetime
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                lock.close()
                continue
            return cls(number, lock)
        raise StartupError(f"all {MAX_SLOTS} node slots are in use (locks in {directory})")

    def release(self) -> None:
        self._lock.close()


def check_host() -> None:
    """Fail early, naming what is missing, rather than half-way through a start."""
    missing = [command for command in REQUIRED_COMMANDS if shutil.which(command) is None]
    if missing:
        raise StartupError(f"a local node needs {', '.join(missing)}: run scripts/bootstrap.sh")
    if os.geteuid() != 0:
        raise StartupError("a local node needs root (namespaces, mounts, cgroups): run as root")


@dataclass
class Node:
    """One node: its namespaces and link first (``prepare``), its daemons once a control plane runs (``start``)."""

    workdir: Path
    toolchain: Toolchain
    slot: NodeSlot | None = None
    init: ManagedProcess | None = None
    init_pid: int = 0
    #: name -> process, in start order
    daemons: dict[str, ManagedProcess] = field(default_factory=dict)
    kubelet_healthz_port: int = 10248
    metrics_server_port: int = 4443

    @property
    def network(self) -> NodeNetwork:
        assert self.slot is not None, "prepare() the node first"
        return self.slot.network

    @property
    def name(self) -> str:
        return NODE_NAME

    # -- phase 1: namespaces and link -------------------------------------------------

    def prepare(self) -> Node:
        """Take a slot, start the node's init in new namespaces and link it to the host."""
        check_host()
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.slot = NodeSlot.acquire()
        try:
            self._sweep_cgroups()
            self._start_init()
            self._link()
        except BaseException:
            self.stop()
            raise
        return self

    def _start_init(self) -> None:
        assert self.slot is not None
        store = self.slot.directory / "containerd"
        store.mkdir(parents=True, exist_ok=True)
        for directory in ("kubelet", "log", "cni"):
            (self.workdir / directory).mkdir(exist_ok=True)
        mounts = {
            "/run": "tmpfs",
            "/var/lib/cni": "tmpfs",
            "/var/lib/containerd": str(store),
            "/var/lib/kubelet": str(self.workdir / "kubelet"),
            "/var/log": str(self.workdir / "log"),
            "/etc/cni/net.d": str(self.workdir / "cni"),
        }
        argv = [
            "unshare",
            "--pid",
            "--fork",
            "--kill-child=SIGKILL",
            "--mount-proc",
            "--net",
            "--propagation",
            "private",
            sys.executable,
            "-m",
            "falachefe_devstack.node_init",
            json.dumps(mounts),
        ]
        env = {"PYTHONPATH": str(Path(__file__).resolve().parents[1])}
        log_path = self.workdir / "node-init.log"
        log_path.unlink(missing_ok=True)
        init = self.init = ManagedProcess("node-init", argv, log_path, env=env).start()
        init.wait_until(lambda: init.log_tail(5).strip() == "ready", 30, "mounts ready")
        assert init.popen is not None
        # unshare's only child is the node's PID 1; the daemons join its namespaces.
        children = Path(f"/proc/{init.popen.pid}/task/{init.popen.pid}/children").read_text().split()
        self.init_pid = int(children[0])
        # For people and tests looking at a node from outside.
        (self.workdir / "init.pid").write_text(f"{self.init_pid}\n")
        net = self.slot.network
        description = {
            "number": self.slot.number,
            "interface": net.host_interface,
            "host_address": net.host_address,
            "node_address": net.node_address,
            "pod_cidr": net.pod_cidr,
            "cgroup_root": self.slot.cgroup_root.strip("/"),
            "image_store": str(store),
        }
        (self.workdir / "slot.json").write_text(json.dumps(description, indent=2))

    def _link(self) -> None:
        net = self.network
        host, inside = net.host_interface, "uplink"
        _run(["ip", "link", "add", host, "type", "veth", "peer", "name", inside, "netns", str(self.init_pid)])
        _run(["ip", "addr", "add", f"{net.host_address}/30", "dev", host])
        _run(["ip", "link", "set", host, "up"])
        _run(["ip", "route", "add", net.pod_cidr, "via", net.node_address, "dev", host])
        for argv in (
            ["ip", "link", "set", "lo", "up"],
            ["ip", "addr", "add", f"{net.node_address}/30", "dev", inside],
            ["ip", "link", "set", inside, "up"],
            ["ip", "route", "add", "default", "via", net.host_address],
            ["sysctl", "-q", "-w", "net.ipv4.ip_forward=1"],
            # The link carries traffic between this machine's own namespaces only.
            ["iptables", "-I", "FORWARD", "-o", inside, "!", "-d", net.host_address, "-j", "REJECT"],
        ):
            _run(self.inside(argv))

    def inside(self, argv: Sequence[str]) -> list[str]:
        """``argv`` run in the node's namespaces (network, mounts, PIDs)."""
        return ["nsenter", "--target", str(self.init_pid), "--net", "--mount", "--pid", "--", *argv]

    # -- phase 2: daemons -------------------------------------------------------------

    def start(self, control_plane: ControlPlane, images: Sequence[Path] = (), sandbox_image: str = "") -> Node:
        """containerd (with ``images`` imported), the kubelet, kube-proxy and metrics-server; wait for Ready."""
        try:
            self._write_configs(control_plane, sandbox_image)
            self._start_containerd()
            self._remove_stale_containers()
            for archive in images:
                self.import_image(archive)
            self._start_kubelet(control_plane)
            self._start_kube_proxy(control_plane)
            self._start_metrics_server(control_plane)
            self._wait_ready(control_plane)
        except BaseException:
            self.stop()
            raise
        return self

    def _write_configs(self, control_plane: ControlPlane, sandbox_image: str) -> None:
        net, conf = self.network, self.workdir / "config"
        conf.mkdir(exist_ok=True)
        nofile, nproc = (resource.getrlimit(limit)[1] for limit in (resource.RLIMIT_NOFILE, resource.RLIMIT_NPROC))
        # Without CAP_SYS_RESOURCE (as in this VM) no container may have a hard limit above the host's.
        spec = json.loads(_run(["ctr", "oci", "spec"]))
        spec["process"]["rlimits"] = [
            {"type": "RLIMIT_NOFILE", "hard": nofile, "soft": nofile},
            {"type": "RLIMIT_NPROC", "hard": nproc, "soft": nproc},
        ]
        (conf / "base-runtime-spec.json").write_text(json.dumps(spec))
        (conf / "containerd.toml").write_text(
            _containerd_config(
                sandbox_image=sandbox_image,
                base_runtime_spec=conf / "base-runtime-spec.json",
                runc=shutil.which("runc") or "runc",
            )
        )
        cni = {
            "cniVersion": "1.0.0",
            "name": "falachefe",
            "plugins": [
                {
                    "type": "bridge",
                    "bridge": "cni0",
                    "isGateway": True,
                    "ipMasq": False,
                    "hairpinMode": True,
                    "ipam": {
                        "type": "host-local",
                        "ranges": [[{"subnet": net.pod_cidr, "gateway": net.pod_gateway}]],
                        "routes": [{"dst": "0.0.0.0/0"}],
                    },
                },
                {"type": "portmap", "capabilities": {"portMappings": True}},
            ],
        }
        (self.workdir / "cni" / "10-falachefe.conflist").write_text(json.dumps(cni, indent=2))
        # Pods resolve nothing: no cluster DNS here, and the host's resolver is not theirs to use.
        (conf / "resolv.conf").write_text("")
        kubelet = {
            "apiVersion": "kubelet.config.k8s.io/v1beta1",
            "kind": "KubeletConfiguration",
            "address": net.node_address,
            "readOnlyPort": 0,
            # The node's own address, not its loopback: the host probes it across the link.
            "healthzBindAddress": net.node_address,
            "healthzPort": self.kubelet_healthz_port,
            "cgroupDriver": "cgroupfs",
            "cgroupRoot": self.slot.cgroup_root if self.slot else "/",
            "failSwapOn": False,
            "failCgroupV1": False,
            "containerRuntimeEndpoint": f"unix://{CONTAINERD_SOCKET}",
            "authentication": {
                "anonymous": {"enabled": False},
                "webhook": {"enabled": True},
                "x509": {"clientCAFile": str(control_plane.kubelet_client_ca_file)},
            },
            "authorization": {"mode": "Webhook"},
            "resolvConf": str(conf / "resolv.conf"),
            # Images here cannot be pulled again: never collect them, never evict for a full-ish disk.
            "imageGCHighThresholdPercent": 100,
            "imageGCLowThresholdPercent": 99,
            "evictionHard": {
                "memory.available": "100Mi",
                "nodefs.available": "1%",
                "imagefs.available": "1%",
                "nodefs.inodesFree": "1%",
            },
            "serializeImagePulls": False,
            "nodeStatusUpdateFrequency": "4s",
            "syncFrequency": "10s",
            "fileCheckFrequency": "10s",
            "maxPods": 110,
        }
        (conf / "kubelet.json").write_text(json.dumps(kubelet, indent=2))
        proxy = {
            "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
            "kind": "KubeProxyConfiguration",
            "clientConnection": {"kubeconfig": str(control_plane.kubeconfig_for(KUBE_PROXY_USER))},
            "mode": "iptables",
            "clusterCIDR": net.pod_cidr,
            "bindAddress": net.node_address,
            "healthzBindAddress": f"{net.node_address}:10256",
            "metricsBindAddress": f"{net.node_address}:10249",
            "hostnameOverride": self.name,
            # conntrack limits are the host kernel's (not namespaced): leave them alone.
            "conntrack": {"maxPerCore": 0, "min": 0, "tcpEstablishedTimeout": "0s", "tcpCloseWaitTimeout": "0s"},
        }
        (conf / "kube-proxy.json").write_text(json.dumps(proxy, indent=2))

    def _start_containerd(self) -> None:
        conf = self.workdir / "config" / "containerd.toml"
        containerd = self._daemon("containerd", ["containerd", "--config", str(conf)])
        containerd.wait_until(lambda: self._ctr_ok("version"), 60, "serving CRI")

    def _ctr_ok(self, *args: str) -> bool:
        result = subprocess.run(self.ctr(*args), capture_output=True, check=False)
        return result.returncode == 0

    def ctr(self, *args: str) -> list[str]:
        return self.inside(["ctr", "--address", CONTAINERD_SOCKET, "--namespace", CRI_NAMESPACE, *args])

    def _remove_stale_containers(self) -> None:
        """Containers a killed run left in the (persistent) image store: their processes died with it."""
        stale = _run(self.ctr("containers", "list", "--quiet")).split()
        if not stale:
            return
        log(f"node: removing {len(stale)} containers left by an earlier run")
        for container in stale:
            subprocess.run(self.ctr("tasks", "delete", "--force", container), capture_output=True, check=False)
        _run(self.ctr("containers", "delete", *stale))
        # CRI read them at start: restart containerd so its view is clean before the kubelet asks.
        self.daemons.pop("containerd").stop()
        self._start_containerd()

    def import_image(self, archive: Path) -> None:
        """Import a docker-archive into the node's image store, unless this slot already holds what it names.

        The store outlives the node (it is the slot's), so an image imported
        once is there on every later start: a marker per archive lists its
        image names, and importing is skipped while all of them are present.
        """
        assert self.slot is not None
        marker = self.slot.directory / "imported" / archive.name
        if marker.exists():
            present = set(_run(self.ctr("images", "list", "--quiet")).split())
            if set(marker.read_text().split()) <= present:
                return
        log(f"node: importing {archive.name} into containerd ({archive.stat().st_size / 2**20:.0f} MiB)")
        started = time.monotonic()
        with archive.open("rb") as stream:
            result = subprocess.run(self.ctr("images", "import", "-"), stdin=stream, capture_output=True, check=False)
        if result.returncode != 0:
            raise StartupError(f"ctr images import {archive} failed: {result.stderr.decode(errors='replace').strip()}")
        output = result.stdout.decode(errors="replace")
        names = [line.split()[1] for line in output.splitlines() if line.startswith("unpacking ")]
        log(f"node: imported {' '.join(names)} in {time.monotonic() - started:.0f}s")
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text("\n".join(names))

    def _make_cgroup_root(self) -> None:
        """The kubelet's cgroup root must exist in every hierarchy before it starts (cgroup v1 here)."""
        assert self.slot is not None
        name = self.slot.cgroup_root.strip("/")
        for hierarchy in CGROUP_ROOT.iterdir():
            if hierarchy.name == "unified" or not (hierarchy / "cgroup.procs").exists():
                continue
            (hierarchy / name).mkdir(exist_ok=True)
            if hierarchy.name == "cpuset":
                # A new cpuset has no CPUs or memory nodes until given its parent's.
                for knob in ("cpuset.cpus", "cpuset.mems"):
                    (hierarchy / name / knob).write_text((hierarchy / knob).read_text())

    def _start_kubelet(self, control_plane: ControlPlane) -> None:
        self._make_cgroup_root()
        conf = self.workdir / "config"
        argv = [
            str(self.toolchain.kubelet),
            "--config",
            str(conf / "kubelet.json"),
            "--kubeconfig",
            str(control_plane.kubeconfig_for(node_user(self.name))),
            "--hostname-override",
            self.name,
            "--node-ip",
            self.network.node_address,
            "--v",
            "1",
        ]
        kubelet = self._daemon("kubelet", argv)
        healthz = f"http://{self.network.node_address}:{self.kubelet_healthz_port}/healthz"
        kubelet.wait_until(lambda: http_ok(healthz), 60, "healthy")

    def _start_kube_proxy(self, control_plane: ControlPlane) -> None:
        argv = [str(self.toolchain.kube_proxy), "--config", str(self.workdir / "config" / "kube-proxy.json"), "--v=1"]
        self._daemon("kube-proxy", argv)

    def _start_metrics_server(self, control_plane: ControlPlane) -> None:
        """The real metrics-server, as a node process: it scrapes the kubelet and serves metrics.k8s.io."""
        admin = str(control_plane.kubeconfig)
        argv = [
            str(self.toolchain.metrics_server),
            "--kubeconfig",
            admin,
            "--authentication-kubeconfig",
            admin,
            "--authorization-kubeconfig",
            admin,
            "--bind-address",
            self.network.node_address,
            "--secure-port",
            str(self.metrics_server_port),
            "--cert-dir",
            str(self.workdir / "metrics-server"),
            "--kubelet-preferred-address-types",
            "InternalIP",
            # The kubelet's serving certificate is self-signed (no CSR approver here).
            "--kubelet-insecure-tls",
            # Its default; it must stay above the 10 s kubelet request timeout.
            "--metric-resolution",
            "15s",
            "--v",
            "1",
        ]
        server = self._daemon("metrics-server", argv)
        url = f"https://{self.network.node_address}:{self.metrics_server_port}/livez"
        server.wait_until(lambda: https_ok(url), 60, "live")

    def _wait_ready(self, control_plane: ControlPlane, timeout: float = 90) -> None:
        """Ready, and without the not-ready taint the node lifecycle controller put on it at registration."""
        kubelet = self.daemons["kubelet"]

        def ready() -> bool:
            result = subprocess.run(
                ["kubectl", "--kubeconfig", str(control_plane.kubeconfig), "get", "node", self.name, "-o", "json"],
                capture_output=True,
                text=True,
                check=False,
            )
            if result.returncode != 0:
                return False
            node = json.loads(result.stdout)
            conditions = {c["type"]: c["status"] for c in node.get("status", {}).get("conditions", [])}
            taints = [t["key"] for t in node.get("spec", {}).get("taints", []) or []]
            return conditions.get("Ready") == "True" and not taints

        kubelet.wait_until(ready, timeout, f"node {self.name} Ready and untainted")

    def _daemon(self, name: str, argv: Sequence[str]) -> ManagedProcess:
        process = ManagedProcess(name, self.inside(argv), self.workdir / f"{name}.log").start()
        self.daemons[name] = process
        return process

    # -- stop -------------------------------------------------------------------------

    def stop(self) -> None:
        """Daemons first (the kubelet stops its pods' probes), then the containers, then everything else."""
        for name, daemon in reversed(self.daemons.items()):
            if name == "containerd" and daemon.running():
                self._remove_containers()
            daemon.stop()
        self.daemons.clear()
        if self.init is not None:
            # pid 1 of the node: its death takes every process, mount and interface of the node with it.
            self.init.kill()
            self.init = None
        if self.slot is not None:
            self._sweep_cgroups()
            self.slot.release()
            self.slot = None

    def _remove_containers(self) -> None:
        """Every container of the node out of the persistent store, so the next start finds none."""
        with contextlib.suppress(subprocess.SubprocessError, OSError):
            containers = _run(self.ctr("containers", "list", "--quiet")).split()
            for container in containers:
                subprocess.run(self.ctr("tasks", "delete", "--force", container), capture_output=True, check=False)
            if containers:
                subprocess.run(self.ctr("containers", "delete", *containers), capture_output=True, check=False)

    def _sweep_cgroups(self) -> None:
        """Remove this slot's cgroups (empty once the node's processes are gone), deepest first."""
        assert self.slot is not None
        name = self.slot.cgroup_root.strip("/")
        for hierarchy in CGROUP_ROOT.iterdir():
            top = hierarchy / name
            if top.is_dir():
                nested = sorted((p for p in top.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts))
                for directory in [*nested, top]:
                    _remove_cgroup(directory)


def _remove_cgroup(directory: Path, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            directory.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError:
            # EBUSY while the kernel is still tearing down the processes that were in it.
            if time.monotonic() > deadline:
                log(f"node: could not remove cgroup {directory}")
                return
            time.sleep(0.1)


def _run(argv: Sequence[str]) -> str:
    result = subprocess.run(list(argv), capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise StartupError(f"{' '.join(argv)} failed ({result.returncode}): {result.stderr.strip()}")
    return result.stdout


def _containerd_config(*, sandbox_image: str, base_runtime_spec: Path, runc: str) -> str:
    """containerd's config (version 2, containerd 1.6): the CRI plugin with runc, cgroupfs and our CNI."""
    cri = '[plugins."io.containerd.grpc.v1.cri"'
    return f"""version = 2
root = "/var/lib/containerd"
state = "/run/containerd"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.zfs"]

[grpc]
  address = "{CONTAINERD_SOCKET}"

[ttrpc]
  address = "{CONTAINERD_SOCKET}.ttrpc"

{cri}]
  sandbox_image = "{sandbox_image}"
  # Lowering a container's oom_score_adj needs CAP_SYS_RESOURCE, which this VM does not grant.
  restrict_oom_score_adj = true
{cri}.containerd]
  snapshotter = "overlayfs"
  default_runtime_name = "runc"
{cri}.containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"
  base_runtime_spec = "{base_runtime_spec}"
{cri}.containerd.runtimes.runc.options]
  SystemdCgroup = false
  BinaryName = "{runc}"
{cri}.cni]
  bin_dir = "{CNI_BIN_DIR}"
  conf_dir = "/etc/cni/net.d"
"""
