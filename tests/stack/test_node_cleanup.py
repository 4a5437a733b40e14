"""A killed run leaves nothing behind: no process, interface, mount, rule or kernel setting of its node.

The stack runs as ``python -m falachefe_devstack.stack up --node`` in a
subprocess, gets a pod running, and is SIGKILLed: no tear-down code runs.
What the node made lives in its own namespaces, which die with its init.
What outlives it by design (empty cgroup directories, container records in
the slot's image store) is cleared by the next start of that slot.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from falachefe_devstack.kube import kubectl
from falachefe_devstack.node import CGROUP_ROOT
from falachefe_devstack.node_init import KUBELET_TUNABLES
from falachefe_devstack.process import ManagedProcess
from falachefe_devstack.waiting import wait_for

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow


def _start_stack(workdir: Path) -> ManagedProcess:
    argv = [sys.executable, "-m", "falachefe_devstack.stack", "up", "--node", "--workdir", str(workdir)]
    stack = ManagedProcess(
        "stack", argv, workdir.parent / f"{workdir.name}.log", env={"PYTHONPATH": str(REPO / "scripts")}
    )
    stack.start()
    stack.wait_until(lambda: "Ctrl-C stops everything." in stack.log_tail(3), 600, "the stack up")
    return stack


def _node_processes(init_pid: int) -> set[int]:
    """Every process in the node's PID namespace (its init's)."""
    namespace = os.readlink(f"/proc/{init_pid}/ns/pid")
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if os.readlink(entry / "ns" / "pid") == namespace:
                    found.add(int(entry.name))
            except OSError:
                continue
    return found


def _host_state() -> dict[str, str]:
    return {
        "iptables": subprocess.run(["iptables-save"], capture_output=True, text=True, check=True).stdout,
        "tunables": json.dumps({name: Path(f"/proc/sys/{name}").read_text() for name in KUBELET_TUNABLES}),
        "links": subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, check=True).stdout,
    }


def _stripped(iptables: str) -> str:
    return "\n".join(line for line in iptables.splitlines() if not line.startswith("#") and not line.startswith(":"))


def test_a_killed_stack_leaves_nothing_and_the_next_start_clears_its_slot(tmp_path: Path) -> None:
    before = _host_state()
    stack = _start_stack(tmp_path / "first")
    kubeconfig = tmp_path / "first" / "kube" / "admin.kubeconfig"
    pause = kubectl(kubeconfig, "get", "node", "-o", "jsonpath={.items[0].status.images[*].names[0]}").stdout.split()
    image = next(name for name in pause if "pause" in name)
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "sleeper", "namespace": "default"},
        "spec": {"containers": [{"name": "c", "image": image, "imagePullPolicy": "Never"}]},
    }
    kubectl(kubeconfig, "apply", "-f", "-", input=json.dumps(pod))
    kubectl(kubeconfig, "wait", "--for=condition=Ready", "pod/sleeper", "--timeout=120s")
    uid = kubectl(kubeconfig, "get", "pod", "sleeper", "-o", "jsonpath={.metadata.uid}").stdout
    init_pid = int((tmp_path / "first" / "node" / "init.pid").read_text())
    inside = _node_processes(init_pid)
    assert len(inside) >= 4, inside  # init, containerd, kubelet, kube-proxy, metrics-server, the shim, pause
    slot = json.loads((tmp_path / "first" / "node" / "slot.json").read_text())

    assert stack.popen is not None
    os.kill(stack.popen.pid, signal.SIGKILL)
    stack.popen.wait()

    wait_for(lambda: not any(Path(f"/proc/{pid}").exists() for pid in inside), 30, 0.2, "every node process gone")
    after = _host_state()
    assert slot["interface"] not in after["links"]
    assert after["tunables"] == before["tunables"]
    assert _stripped(after["iptables"]) == _stripped(before["iptables"])
    mounts = Path("/proc/self/mountinfo").read_text()
    assert str(tmp_path) not in mounts and "/var/lib/kubelet" not in mounts

    # What a killed run cannot remove itself: the pod's (empty) cgroup. The next start of the slot does.
    leftovers = list(CGROUP_ROOT.glob(f"*/{slot['cgroup_root']}/**/pod{uid}"))
    second = _start_stack(tmp_path / "second")
    try:
        second_slot = json.loads((tmp_path / "second" / "node" / "slot.json").read_text())
        if second_slot["number"] == slot["number"]:
            assert leftovers, "the killed run's pod cgroup should have outlived it"
            assert not [path for path in leftovers if path.exists()], leftovers
            assert "containers left by an earlier run" in second.log_tail(200)
    finally:
        second.stop(timeout=60)
    assert second_slot["interface"] not in _host_state()["links"]
