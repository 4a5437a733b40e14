"""A real Kubernetes control plane, started the way envtest does it.

etcd, kube-apiserver (RBAC on, static token users, its own self-signed
serving certificate, the aggregation layer's front-proxy certificates) and
kube-controller-manager (garbage collector, deployment, replicaset,
namespace, disruption and service-account controllers), on loopback. Alone,
it has no scheduler and no kubelet: pods are created but never run, which
is what a control-plane test wants.

For a real node (:mod:`falachefe_devstack.node`) it runs with ``address``
set to the host end of the node's link, so pods can reach it through the
``kubernetes`` Service, and ``with_node=True`` adds what a cluster with
nodes needs: ServiceAccount and NodeRestriction admission, the Node
authorizer, a client certificate for talking to kubelets, kube-scheduler,
and the controllers for nodes, endpoints, Jobs and the root CA ConfigMap.

Users (static tokens):

- ``admin`` in ``system:masters``: the harness and the demo;
- ``restricted``: authenticated, granted nothing, for RBAC tests;
- the node's own identities (``system:node:<name>``, ``system:kube-proxy``,
  ``system:kube-scheduler``), which the built-in RBAC and the Node
  authorizer already know.

The API server keeps an audit log of every read of a Secret with what it
sent back (``audit_events``), so a test can tell what a client was given,
not only what it was allowed: a whole Secret, or only whether it exists.
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
from typing import Any

from kubernetes import client as k8s

from .process import ManagedProcess, free_port, http_ok
from .toolchain import Toolchain

ADMIN_USER = "admin"
RESTRICTED_USER = "restricted"
#: The user of the client certificate `ControlPlane` signs (pki/certificate-user.crt, .key).
CERTIFICATE_USER = "certificate-user"
NODE_NAME = "falachefe-node"
KUBE_PROXY_USER = "system:kube-proxy"
SCHEDULER_USER = "system:kube-scheduler"
SERVICE_CIDR = "10.96.0.0/16"
CONTROLLERS = "garbagecollector,deployment,replicaset,namespace,serviceaccount,serviceaccount-token,disruption,job"
#: Reads of Secrets, with the response, and nothing else.
AUDIT_POLICY = {
    "apiVersion": "audit.k8s.io/v1",
    "kind": "Policy",
    "omitStages": ["RequestReceived"],
    "rules": [
        {
            "level": "RequestResponse",
            "verbs": ["get", "list", "watch"],
            "resources": [{"group": "", "resources": ["secrets"]}],
        },
        {"level": "None"},
    ],
}
#: With a node: not-ready taints lifted, Services' endpoints, the kube-root-ca.crt ConfigMap, pod GC.
NODE_CONTROLLERS = (
    "nodelifecycle,taint-eviction-controller,endpoint,endpointslice,endpointslicemirroring,"
    "ttl-after-finished,root-ca-cert-publisher,podgc"
)


def node_user(node_name: str) -> str:
    return f"system:node:{node_name}"


@dataclass
class ControlPlane:
    workdir: Path
    toolchain: Toolchain
    #: The apiserver's bind and advertise address: loopback alone, the host end of a node's link with one.
    address: str = "127.0.0.1"
    with_node: bool = False
    etcd_port: int = field(default_factory=free_port)
    etcd_peer_port: int = field(default_factory=free_port)
    apiserver_port: int = field(default_factory=free_port)
    #: user name -> bearer token
    tokens: dict[str, str] = field(
        default_factory=lambda: {
            user: secrets.token_hex(16)
            for user in (ADMIN_USER, RESTRICTED_USER, node_user(NODE_NAME), KUBE_PROXY_USER, SCHEDULER_USER)
        }
    )
    #: The controller-manager's requests per second to the API server (its default, 20, when None);
    #: a benchmark creating thousands of pods raises it so that it measures more than that limit.
    controller_manager_qps: int | None = None
    processes: list[ManagedProcess] = field(default_factory=list)
    #: What the API server writes to ``audit_log``: by default the reads of Secrets, with their answers.
    audit_policy: dict[str, Any] = field(default_factory=lambda: AUDIT_POLICY)

    @property
    def admin_token(self) -> str:
        return self.tokens[ADMIN_USER]

    @property
    def restricted_token(self) -> str:
        return self.tokens[RESTRICTED_USER]

    @property
    def server(self) -> str:
        return f"https://{self.address}:{self.apiserver_port}"

    @property
    def pki(self) -> Path:
        return self.workdir / "pki"

    @property
    def ca_file(self) -> Path:
        """The apiserver's self-signed serving certificate (it includes its CA)."""
        return self.pki / "apiserver.crt"

    @property
    def kubelet_client_ca_file(self) -> Path:
        """The CA kubelets trust for the apiserver's client certificate (logs, exec, port-forward)."""
        return self.pki / "kubelet-client-ca.crt"

    @property
    def kubeconfig(self) -> Path:
        return self.workdir / "admin.kubeconfig"

    @property
    def restricted_kubeconfig(self) -> Path:
        return self.workdir / "restricted.kubeconfig"

    @property
    def audit_log(self) -> Path:
        return self.workdir / "audit.log"

    def audit_events(self, user: str) -> list[dict[str, Any]]:
        """The audit events of ``user``'s requests (reads of Secrets, with what the API server answered)."""
        if not self.audit_log.exists():
            return []
        events = (json.loads(line) for line in self.audit_log.read_text().splitlines() if line)
        return [event for event in events if event.get("user", {}).get("username") == user]

    def start(self, timeout: float = 90.0) -> ControlPlane:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.pki.mkdir(exist_ok=True)
        self._write_credentials()
        self._start_etcd(timeout)
        self._start_apiserver(timeout)
        self.write_kubeconfig(self.kubeconfig, ADMIN_USER, self.admin_token)
        self.write_kubeconfig(self.restricted_kubeconfig, RESTRICTED_USER, self.restricted_token)
        self._start_controller_manager(timeout)
        if self.with_node:
            self._start_scheduler(timeout)
        return self

    def stop(self) -> None:
        for process in reversed(self.processes):
            process.stop()
        self.processes.clear()

    def stop_component(self, name: str) -> None:
        """Stop one of the control plane's processes (``kube-controller-manager``, ``kube-apiserver``, ...)."""
        process = next(p for p in self.processes if p.name == name)
        process.stop()
        self.processes.remove(process)

    def restart_apiserver(self, timeout: float = 90.0) -> None:
        """Stop the API server and start it again over the same etcd, as an upgrade or a crash does.

        Its watch cache starts empty at etcd's current revision: a watch
        resumed from an older resource version gets ``410 Gone``.
        """
        self.stop_component("kube-apiserver")
        self._start_apiserver(timeout)

    def kubeconfig_for(self, user: str) -> Path:
        """A kubeconfig (written on first use) for one of the static-token users."""
        path = self.workdir / f"{re.sub(r'[^a-z0-9-]+', '-', user)}.kubeconfig"
        if not path.exists():
            self.write_kubeconfig(path, user, self.tokens[user])
        return path

    # -- credentials ---------------------------------------------------------

    def _write_credentials(self) -> None:
        groups = {ADMIN_USER: "system:masters", node_user(NODE_NAME): "system:nodes"}
        (self.pki / "tokens.csv").write_text(
            "".join(
                f"{token},{user},uid-{user.replace(':', '-')}" + (f',"{groups[user]}"' if user in groups else "") + "\n"
                for user, token in self.tokens.items()
            )
        )
        self.pki.joinpath("tokens.csv").chmod(0o600)
        (self.workdir / "audit-policy.json").write_text(json.dumps(self.audit_policy))
        _openssl("genrsa", "-out", str(self.pki / "sa.key"), "2048")
        _openssl("rsa", "-in", str(self.pki / "sa.key"), "-pubout", "-out", str(self.pki / "sa.pub"))
        # The aggregation layer authenticates itself to extension API servers
        # with a client certificate from the front-proxy CA.
        _client_certificate(self.pki, "front-proxy-ca", "front-proxy-client", "/CN=front-proxy-client")
        # A user who authenticates with a client certificate (CN is the user name), for the credentials tests.
        _client_certificate(self.pki, "user-client-ca", "certificate-user", f"/CN={CERTIFICATE_USER}")
        # The apiserver's identity towards kubelets: a member of system:masters.
        _client_certificate(
            self.pki, "kubelet-client-ca", "kubelet-client", "/O=system:masters/CN=kube-apiserver-kubelet-client"
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
            self.address,
            "--advertise-address",
            self.address,
            "--secure-port",
            str(self.apiserver_port),
            "--service-cluster-ip-range",
            SERVICE_CIDR,
            "--allow-privileged=true",
            "--authorization-mode",
            "Node,RBAC" if self.with_node else "RBAC",
            "--token-auth-file",
            str(pki / "tokens.csv"),
            "--client-ca-file",
            str(pki / "user-client-ca.crt"),
            "--anonymous-auth=false",
            "--service-account-issuer",
            "https://kubernetes.default.svc.cluster.local",
            "--service-account-key-file",
            str(pki / "sa.pub"),
            "--service-account-signing-key-file",
            str(pki / "sa.key"),
            *self._admission_flags(),
            "--kubelet-client-certificate",
            str(pki / "kubelet-client.crt"),
            "--kubelet-client-key",
            str(pki / "kubelet-client.key"),
            "--kubelet-preferred-address-types",
            "InternalIP",
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
            # The apiserver runs outside the node, where ClusterIPs mean nothing:
            # the aggregator dials the extension server's endpoints instead.
            "--enable-aggregator-routing=true",
            "--audit-policy-file",
            str(self.workdir / "audit-policy.json"),
            "--audit-log-path",
            str(self.audit_log),
            "--audit-log-format",
            "json",
            "--v",
            "1",
        ]
        apiserver = ManagedProcess("kube-apiserver", argv, self.workdir / "kube-apiserver.log").start()
        self.processes.append(apiserver)
        apiserver.wait_until(self._ready, timeout, "/readyz ok")

    def _admission_flags(self) -> list[str]:
        if self.with_node:
            return ["--enable-admission-plugins", "NodeRestriction"]
        # Without a kubelet no pod can mount a token; envtest disables it too.
        return ["--disable-admission-plugins", "ServiceAccount"]

    def _start_controller_manager(self, timeout: float) -> None:
        argv = [
            str(self.toolchain.kube_controller_manager),
            "--kubeconfig",
            str(self.kubeconfig),
            "--controllers",
            f"{CONTROLLERS},{NODE_CONTROLLERS}" if self.with_node else CONTROLLERS,
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
        if self.controller_manager_qps is not None:
            qps = self.controller_manager_qps
            argv += ["--kube-api-qps", str(qps), "--kube-api-burst", str(2 * qps)]
        controller_manager = ManagedProcess(
            "kube-controller-manager", argv, self.workdir / "kube-controller-manager.log"
        ).start()
        self.processes.append(controller_manager)
        # Ready when the token controller has populated the default ServiceAccount.
        controller_manager.wait_until(
            lambda: self._get_ok("/api/v1/namespaces/default/serviceaccounts/default"), timeout, "controllers running"
        )

    def _start_scheduler(self, timeout: float) -> None:
        port = free_port()
        argv = [
            str(self.toolchain.kube_scheduler),
            "--kubeconfig",
            str(self.kubeconfig_for(SCHEDULER_USER)),
            "--leader-elect=false",
            "--bind-address",
            "127.0.0.1",
            "--secure-port",
            str(port),
            "--v",
            "1",
        ]
        scheduler = ManagedProcess("kube-scheduler", argv, self.workdir / "kube-scheduler.log").start()
        self.processes.append(scheduler)
        scheduler.wait_until(lambda: https_ok(f"https://127.0.0.1:{port}/healthz"), timeout, "healthy")

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


def _client_certificate(pki: Path, ca: str, client: str, subject: str) -> None:
    """A CA (``<ca>.crt``, ``.key``) and a client certificate (``<client>.crt``, ``.key``) it signs for ``subject``."""
    ca_key, ca_crt = pki / f"{ca}.key", pki / f"{ca}.crt"
    key, csr, crt = pki / f"{client}.key", pki / f"{client}.csr", pki / f"{client}.crt"
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "3650", "-subj", f"/CN={ca}",
             "-keyout", str(ca_key), "-out", str(ca_crt))  # fmt: skip
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", subject, "-keyout", str(key), "-out", str(csr))
    _openssl("x509", "-req", "-in", str(csr), "-days", "3650", "-CA", str(ca_crt), "-CAkey", str(ca_key),
             "-CAcreateserial", "-out", str(crt))  # fmt: skip


def https_ok(url: str) -> bool:
    """Does a component's own HTTPS health endpoint (self-signed, loopback) answer 200?"""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    try:
        with urllib.request.urlopen(url, timeout=1, context=context) as response:  # noqa: S310 - our loopback URL
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False
