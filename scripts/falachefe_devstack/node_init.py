"""PID 1 of a local node: prepares the node's private mounts, then reaps until it is killed.

:class:`falachefe_devstack.node.Node` starts this module with ``unshare``
in new PID, mount and network namespaces (``--kill-child``, so it dies with
the process that started the node). containerd, the kubelet, kube-proxy and
metrics-server then join its namespaces with ``nsenter``, and every
container runc starts lives below them. When this process dies, for any
reason, the kernel kills everything in its PID namespace, every mount made
in its mount namespace goes away with it, and so does its network
namespace with the bridge, the veth and the iptables rules: a killed test
run leaves no container, mount, interface or rule behind.

The mounts give the node daemons the standard paths of a node without
touching the host's:

- tmpfs over ``/run`` (containerd's state and shim sockets, the pods'
  network namespaces) and ``/var/lib/cni`` (IP allocations);
- bind mounts of the node's work directory over ``/var/lib/kubelet``,
  ``/var/log`` and ``/etc/cni/net.d``, and of the cached image store over
  ``/var/lib/containerd``;
- the kubelet insists on six kernel tunables (``vm.overcommit_memory=1``,
  ``kernel.panic=10``...) and rewrites them when they differ. They are not
  namespaced: on this machine they belong to the host. Files holding the
  values it expects are bound over those ``/proc/sys`` entries, inside this
  mount namespace only, so the kubelet finds them set and changes nothing.

Usage (as the node does it): ``python -m falachefe_devstack.node_init MOUNTS_JSON``
where the JSON maps a mount point to a source directory (bind) or to
``"tmpfs"``. It prints ``ready`` once the mounts are in place.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

#: What the kubelet's container manager expects (pkg/kubelet/cm setupKernelTunables).
KUBELET_TUNABLES = {
    "vm/overcommit_memory": 1,
    "vm/panic_on_oom": 0,
    "kernel/panic": 10,
    "kernel/panic_on_oops": 1,
    "kernel/keys/root_maxkeys": 1000000,
    "kernel/keys/root_maxbytes": 25000000,
}


def _mount(*args: str) -> None:
    subprocess.run(["mount", *args], check=True)


def prepare(mounts: dict[str, str]) -> None:
    # Nothing mounted here propagates to the host, and the kubelet's
    # MakeRShared of its root directory stays inside this namespace.
    _mount("--make-rprivate", "/")
    for target, source in mounts.items():
        Path(target).mkdir(parents=True, exist_ok=True)
        if source == "tmpfs":
            _mount("-t", "tmpfs", "-o", "mode=0755", "tmpfs", target)
        else:
            _mount("--bind", source, target)
    masks = Path(tempfile.mkdtemp(prefix="tunables-", dir="/run"))
    for name, value in KUBELET_TUNABLES.items():
        stand_in = masks / name.replace("/", ".")
        stand_in.write_text(f"{value}\n")
        _mount("--bind", str(stand_in), f"/proc/sys/{name}")


def reap_forever() -> None:
    """Be a proper init: collect every orphan that exits (the daemons' children end up here); stop on SIGTERM."""
    watched = {signal.SIGCHLD, signal.SIGTERM, signal.SIGINT}
    # Blocked signals stay pending until sigwaitinfo takes them: none is lost between two waits.
    signal.pthread_sigmask(signal.SIG_BLOCK, watched)
    while True:
        info = signal.sigwaitinfo(watched)
        if info.si_signo != signal.SIGCHLD:
            return
        try:
            while os.waitpid(-1, os.WNOHANG)[0] != 0:
                pass
        except ChildProcessError:
            pass


def main() -> int:
    prepare(json.loads(sys.argv[1]))
    print("ready", flush=True)
    reap_forever()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
