"""Where the API server is and who the operator is to it: a pod's service account, or a kubeconfig.

The common cases are read here, without the ``kubernetes`` library: the
pod's service account (the token file re-read every minute, as client-go
and the library do, so a rotated projected token is picked up), and a
kubeconfig whose context names a server, its CA, and a bearer token, a
token file or a client certificate. Anything else a kubeconfig can say
(exec plugins, auth providers, basic auth, several files merged through
``$KUBECONFIG``) goes to the library's own loader, imported only then. As
before this module, a ``proxy-url`` is not followed: the operator connects
to the server directly.

Why not always the library: importing any of it imports all of it (every
API class and model: 121 MiB for a process that imports the operator's CLI
module with it, 81 MiB without; bench/README.md), and the operator needs none of
that at run time. Kopf imports it too if it can, only to recognise its
model classes, which the operator never passes; ``falachefe_operator``
imports Kopf without it (see ``__init__``).
"""

from __future__ import annotations

import base64
import dataclasses
import os
import ssl
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import yaml

SERVICE_ACCOUNT = Path("/var/run/secrets/kubernetes.io/serviceaccount")
#: client-go's and the Python library's: a token file is read again after a minute.
TOKEN_REFRESH_SECONDS = 60.0

#: What a kubeconfig's cluster and user may say for it to be read here (extensions are
#: informational); anything more goes to the library.
_CLUSTER_KEYS = {
    "server",
    "certificate-authority",
    "certificate-authority-data",
    "insecure-skip-tls-verify",
    "extensions",
}
_USER_KEYS = {
    "token",
    "tokenFile",
    "client-certificate",
    "client-certificate-data",
    "client-key",
    "client-key-data",
    "extensions",
}


@dataclasses.dataclass(frozen=True)
class Credentials:
    """The API server's URL, the TLS settings to reach it, and the request headers that authenticate."""

    server: str
    ssl: ssl.SSLContext
    authorization: Callable[[], dict[str, str]]

    def headers(self) -> dict[str, str]:
        return self.authorization()


class TokenFile:
    """A bearer token read from a file, again once it is a minute old (a projected token rotates)."""

    def __init__(self, path: Path, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._path = path
        self._clock = clock
        self._read_at = -float("inf")
        self._headers: dict[str, str] = {}

    def __call__(self) -> dict[str, str]:
        now = self._clock()
        if now - self._read_at >= TOKEN_REFRESH_SECONDS:
            token = self._path.read_text().strip()
            self._headers = {"Authorization": f"Bearer {token}"} if token else {}
            self._read_at = now
        return self._headers


def load_credentials(kubeconfig: str | None = None) -> Credentials:
    """An explicit kubeconfig, $KUBECONFIG, the pod's service account, ~/.kube/config: the first that is there."""
    if kubeconfig or os.environ.get("KUBECONFIG"):
        return from_kubeconfig(kubeconfig or os.environ["KUBECONFIG"])
    if os.environ.get("KUBERNETES_SERVICE_HOST"):
        return from_service_account()
    return from_kubeconfig(str(Path("~/.kube/config").expanduser()))


def from_service_account(root: Path = SERVICE_ACCOUNT, environ: Mapping[str, str] = os.environ) -> Credentials:
    host, port = environ.get("KUBERNETES_SERVICE_HOST", ""), environ.get("KUBERNETES_SERVICE_PORT", "")
    if not host or not port:
        raise RuntimeError("not in a pod: KUBERNETES_SERVICE_HOST and KUBERNETES_SERVICE_PORT are not both set")
    if not (root / "token").is_file():
        raise RuntimeError(f"the pod has no service account token at {root / 'token'}")
    server = f"https://[{host}]:{port}" if ":" in host else f"https://{host}:{port}"
    return Credentials(server=server, ssl=_tls(cafile=str(root / "ca.crt")), authorization=TokenFile(root / "token"))


def from_kubeconfig(path: str) -> Credentials:
    """The current context of a kubeconfig; the ``kubernetes`` library's loader for what is not read here."""
    if os.pathsep in path:
        return _from_library(path)
    file = Path(path).expanduser()
    config = yaml.safe_load(file.read_text()) or {}
    context = _named(config, "contexts", config.get("current-context"), "context")
    cluster = _named(config, "clusters", context.get("cluster"), "cluster")
    user = _named(config, "users", context.get("user"), "user") if context.get("user") else {}
    if set(cluster) - _CLUSTER_KEYS or set(user) - _USER_KEYS:
        return _from_library(path)
    base = file.parent
    if not cluster.get("server"):
        raise ValueError(f"{path}: the current context's cluster names no server")
    ca_data, ca_file = cluster.get("certificate-authority-data"), cluster.get("certificate-authority")
    tls = _tls(
        cafile=str(base / ca_file) if ca_file and not ca_data else None,
        cadata=base64.b64decode(ca_data).decode() if ca_data else None,
        verify=not cluster.get("insecure-skip-tls-verify"),
    )
    _load_client_certificate(tls, user, base)
    authorization: Callable[[], dict[str, str]]
    if user.get("token"):
        headers = {"Authorization": f"Bearer {user['token']}"}
        authorization = headers.copy
    elif user.get("tokenFile"):
        authorization = TokenFile(base / user["tokenFile"])
    else:
        authorization = dict
    return Credentials(server=str(cluster["server"]).rstrip("/"), ssl=tls, authorization=authorization)


def _tls(*, cafile: str | None = None, cadata: str | None = None, verify: bool = True) -> ssl.SSLContext:
    """A client TLS context: the given CA (else the system's); with ``verify`` off, the server is not checked
    (a client certificate is still presented)."""
    context = ssl.create_default_context(cafile=cafile, cadata=cadata)
    if not verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def _named(config: Mapping[str, Any], section: str, name: Any, key: str) -> dict[str, Any]:
    for entry in config.get(section) or ():
        if entry.get("name") == name:
            return dict(entry.get(key) or {})
    raise ValueError(f"the kubeconfig has no {section[:-1]} named {name!r}")


def _load_client_certificate(context: ssl.SSLContext, user: Mapping[str, Any], base: Path) -> None:
    if user.get("client-certificate-data") or user.get("client-key-data"):
        # load_cert_chain reads files only: the PEMs go to private files, deleted once read.
        with tempfile.TemporaryDirectory(prefix="falachefe-") as directory:
            certificate, key = Path(directory, "tls.crt"), Path(directory, "tls.key")
            for target, field, fallback in (
                (certificate, "client-certificate-data", "client-certificate"),
                (key, "client-key-data", "client-key"),
            ):
                data = user.get(field)
                target.touch(mode=0o600)
                target.write_bytes(base64.b64decode(data) if data else (base / user[fallback]).read_bytes())
            context.load_cert_chain(str(certificate), str(key))
    elif user.get("client-certificate"):
        context.load_cert_chain(str(base / user["client-certificate"]), str(base / user["client-key"]))


def _from_library(path: str) -> Credentials:
    # Imported here: the whole library comes with it (see the module's docstring).
    from kubernetes import client as k8s  # noqa: PLC0415 - the whole library: only for these kubeconfigs
    from kubernetes import config as k8s_config  # noqa: PLC0415

    configuration = k8s.Configuration()
    # The library merges the files of a $KUBECONFIG-style list itself.
    k8s_config.load_kube_config(config_file=path, client_configuration=configuration)
    context = _tls(cafile=configuration.ssl_ca_cert, verify=configuration.verify_ssl)
    if configuration.cert_file:
        context.load_cert_chain(configuration.cert_file, configuration.key_file)

    def authorization() -> dict[str, str]:
        # auth_settings() runs the loader's refresh hook: an exec plugin's expired token is renewed here.
        settings = configuration.auth_settings().get("BearerToken")
        if settings and settings.get("value"):
            return {"Authorization": str(settings["value"])}
        return {}

    return Credentials(server=configuration.host.rstrip("/"), ssl=context, authorization=authorization)
