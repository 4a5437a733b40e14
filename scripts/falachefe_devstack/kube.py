"""A real Kubernetes control plane on loopback, started the way envtest does it.

etcd, kube-apiserver (RBAC on, static token users, its own self-signed
serving certificate, the aggregation layer's front-proxy certificates) and
kube-controller-manager (garbage collector, deployment, replicaset,
namespace and service-account controllers). No scheduler or kubelet: pods
are created but never run, which is what a control-plane test wants.

Users (static tokens):

- ``admin`` in ``system:masters``: the harness and the demo;
- ``restricted``: authenticated, granted nothing, for RBAC tests.
"""

from __future__ import annotations

import base64
import contextlib
import json
import re
import secrets
import ssl
import subprocess
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from kubernetes import client as k8s

from .process import ManagedProcess, free_port, http_ok
from .toolchain import Toolchain

ADMIN_USER = "admin"
RESTRICTED_USER = "restricted"
CONTROLLERS = "garbagecollector,deployment,replicaset,namespace,serviceaccount,serviceaccount-token,disruption"


@dataclass
class ControlPlane:
    workdir: Path
    toolchain: Toolchain
    etcd_port: int = field(default_factory=free_port)
    etcd_peer_port: int = field(default_factory=free_port)
    apiserver_port: int = field(default_factory=free_port)
    admin_token: str = field(default_factory=lambda: secrets.token_hex(16))
    restricted_token: str = field(default_factory=lambda: secrets.token_hex(16))
    processes: list[ManagedProcess] = field(default_factory=list)

    @property
    def server(self) -> str:
        return f"https://127.0.0.1:{self.apiserver_port}"

    @property
    def pki(self) -> Path:
        return self.workdir / "pki"

    @property
    def ca_file(self) -> Path:
        """The apiserver's self-signed serving certificate (it includes its CA)."""
        return self.pki / "apiserver.crt"

    @property
    def kubeconfig(self) -> Path:
        return self.workdir / "admin.kubeconfig"

    @property
    def restricted_kubeconfig(self) -> Path:
        return self.workdir / "restricted.kubeconfig"

    def start(self, timeout: float = 90.0) -> ControlPlane:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.pki.mkdir(exist_ok=True)
        self._write_credentials()
        self._start_etcd(timeout)
        self._start_apiserver(timeout)
        self.write_kubeconfig(self.kubeconfig, ADMIN_USER, self.admin_token)
        self.write_kubeconfig(self.restricted_kubeconfig, RESTRICTED_USER, self.restricted_token)
        self._start_controller_manager(timeout)
        return self

    def stop(self) -> None:
        for process in reversed(self.processes):
            process.stop()
        self.processes.clear()

    # -- credentials ---------------------------------------------------------

    def _write_credentials(self) -> None:
        (self.pki / "tokens.csv").write_text(
            f'{self.admin_token},{ADMIN_USER},uid-admin,"system:masters"\n'
            f"{self.restricted_token},{RESTRICTED_USER},uid-restricted\n"
        )
        self.pki.joinpath("tokens.csv").chmod(0o600)
        _openssl("genrsa", "-out", str(self.pki / "sa.key"), "2048")
        _openssl("rsa", "-in", str(self.pki / "sa.key"), "-pubout", "-out", str(self.pki / "sa.pub"))
        # The aggregation layer authenticates itself to extension API servers
        # with a client certificate from the front-proxy CA.
        _openssl(
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "3650",
            "-subj",
            "/CN=front-proxy-ca",
            "-keyout",
            str(self.pki / "front-proxy-ca.key"),
            "-out",
            str(self.pki / "front-proxy-ca.crt"),
        )
        _openssl(
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=front-proxy-client",
            "-keyout",
            str(self.pki / "front-proxy-client.key"),
            "-out",
            str(self.pki / "front-proxy-client.csr"),
        )
        _openssl(
            "x509",
            "-req",
            "-in",
            str(self.pki / "front-proxy-client.csr"),
            "-days",
            "3650",
            "-CA",
            str(self.pki / "front-proxy-ca.crt"),
            "-CAkey",
            str(self.pki / "front-proxy-ca.key"),
            "-CAcreateserial",
            "-out",
            str(self.pki / "front-proxy-client.crt"),
        )

    def write_kubeconfig(self, path: Path, user: str, token: str, namespace: str = "default") -> Path:
        """A kubeconfig for kubectl and the Python clients (JSON is valid YAML)."""
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "local",
                    "cluster": {
                        "server": self.server,
                        "certificate-authority-data": base64.b64encode(self.ca_file.read_bytes()).decode(),
                    },
                }
            ],
            "users": [{"name": user, "user": {"token": token}}],
            "contexts": [{"name": user, "context": {"cluster": "local", "user": user, "namespace": namespace}}],
            "current-context": user,
        }
        path.write_text(json.dumps(config, indent=2))
        path.chmod(0o600)
        return path

    # -- processes -------------------------------------------------------------

    def _start_etcd(self, timeout: float) -> None:
        argv = [
            str(self.toolchain.etcd),
            "--data-dir",
            str(self.workdir / "etcd"),
            "--listen-client-urls",
            f"http://127.0.0.1:{self.etcd_port}",
            "--advertise-client-urls",
            f"http://127.0.0.1:{self.etcd_port}",
            "--listen-peer-urls",
            f"http://127.0.0.1:{self.etcd_peer_port}",
            "--initial-advertise-peer-urls",
            f"http://127.0.0.1:{self.etcd_peer_port}",
            "--initial-cluster",
            f"default=http://127.0.0.1:{self.etcd_peer_port}",
            "--unsafe-no-fsync",
            "--log-level",
            "warn",
        ]
        etcd = ManagedProcess("etcd", argv, self.workdir / "etcd.log").start()
        self.processes.append(etcd)
        etcd.wait_until(lambda: http_ok(f"http://127.0.0.1:{self.etcd_port}/health"), timeout, "healthy")

    def _start_apiserver(self, timeout: float) -> None:
        pki = self.pki
        argv = [
            str(self.toolchain.kube_apiserver),
            "--etcd-servers",
            f"http://127.0.0.1:{self.etcd_port}",
            "--cert-dir",
            str(pki),
            "--bind-address",
            "127.0.0.1",
            "--advertise-address",
            "127.0.0.1",
            "--secure-port",
            str(self.apiserver_port),
            "--service-cluster-ip-range",
            "10.96.0.0/16",
            "--allow-privileged=true",
            "--authorization-mode",
            "RBAC",
            "--token-auth-file",
            str(pki / "tokens.csv"),
            "--anonymous-auth=false",
            "--service-account-issuer",
            "https://kubernetes.default.svc.cluster.local",
            "--service-account-key-file",
            str(pki / "sa.pub"),
            "--service-account-signing-key-file",
            str(pki / "sa.key"),
            # Without a kubelet no pod can mount a token; envtest disables it too.
            "--disable-admission-plugins",
            "ServiceAccount",
            "--requestheader-client-ca-file",
            str(pki / "front-proxy-ca.crt"),
            "--requestheader-allowed-names",
            "front-proxy-client",
            "--requestheader-extra-headers-prefix",
            "X-Remote-Extra-",
            "--requestheader-group-headers",
            "X-Remote-Group",
            "--requestheader-username-headers",
            "X-Remote-User",
            "--proxy-client-cert-file",
            str(pki / "front-proxy-client.crt"),
            "--proxy-client-key-file",
            str(pki / "front-proxy-client.key"),
            # No kube-proxy here: the aggregator dials endpoints, not ClusterIPs.
            "--enable-aggregator-routing=true",
            "--v",
            "1",
        ]
        apiserver = ManagedProcess("kube-apiserver", argv, self.workdir / "kube-apiserver.log").start()
        self.processes.append(apiserver)
        apiserver.wait_until(self._ready, timeout, "/readyz ok")

    def _start_controller_manager(self, timeout: float) -> None:
        argv = [
            str(self.toolchain.kube_controller_manager),
            "--kubeconfig",
            str(self.kubeconfig),
            "--controllers",
            CONTROLLERS,
            "--leader-elect=false",
            "--secure-port",
            "0",
            "--service-account-private-key-file",
            str(self.pki / "sa.key"),
            "--root-ca-file",
            str(self.ca_file),
            "--concurrent-gc-syncs",
            "10",
            "--v",
            "1",
        ]
        controller_manager = ManagedProcess(
            "kube-controller-manager", argv, self.workdir / "kube-controller-manager.log"
        ).start()
        self.processes.append(controller_manager)
        # Ready when the token controller has populated the default ServiceAccount.
        controller_manager.wait_until(
            lambda: self._get_ok("/api/v1/namespaces/default/serviceaccounts/default"), timeout, "controllers running"
        )

    # -- probes ----------------------------------------------------------------

    def _ssl_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca_file))

    def _get_ok(self, path: str) -> bool:
        request = urllib.request.Request(  # noqa: S310 - https URL of our own apiserver
            self.server + path, headers={"Authorization": f"Bearer {self.admin_token}"}
        )
        try:
            with urllib.request.urlopen(request, timeout=2, context=self._ssl_context()) as response:  # noqa: S310
                return bool(response.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def _ready(self) -> bool:
        return self.ca_file.exists() and self._get_ok("/readyz")


@contextlib.contextmanager
def temporary_namespace(api: k8s.ApiClient, stem: str) -> Iterator[str]:
    """A fresh namespace named after ``stem`` (made a valid DNS label), deleted with its contents afterwards."""
    label = re.sub(r"[^a-z0-9-]+", "-", stem.lower()).strip("-")[:40].strip("-") or "ns"
    name = f"{label}-{uuid.uuid4().hex[:6]}"
    core = k8s.CoreV1Api(api)
    core.create_namespace(k8s.V1Namespace(metadata=k8s.V1ObjectMeta(name=name)))
    try:
        yield name
    finally:
        core.delete_namespace(name)


class KubectlError(subprocess.CalledProcessError):
    """kubectl failed; unlike its base class, the message carries kubectl's own words."""

    def __str__(self) -> str:
        return f"{' '.join(self.cmd[3:])} failed ({self.returncode}): {str(self.stderr).strip()}"


def kubectl(
    kubeconfig: Path, *args: str, input: str | None = None, check: bool = True, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """Run ``kubectl`` against ``kubeconfig``; with ``check``, a failure raises ``KubectlError``."""
    argv = ["kubectl", "--kubeconfig", str(kubeconfig), *args]
    result = subprocess.run(argv, input=input, capture_output=True, text=True, timeout=timeout, check=False)
    if check and result.returncode != 0:
        raise KubectlError(result.returncode, argv, result.stdout, result.stderr)
    return result


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)
