"""The operator's identity without the ``kubernetes`` library, proven against the real API server.

Each way of authenticating is checked by asking the API server who it
thinks the caller is (a SelfSubjectReview), not by inspecting what was
parsed: a token, a token file that rotates, a client certificate (inline,
as files, and with the server unverified), the pod's service account, and
an exec plugin and a list of kubeconfigs (which go to the library's
loader). And that the operator runs without importing that library.
"""

from __future__ import annotations

import base64
import json
import os
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from kubernetes.utils import parse_quantity as library_parse_quantity
from opkit import Clock

from falachefe_devstack.kube import ADMIN_USER, CERTIFICATE_USER, ControlPlane
from falachefe_operator.credentials import Credentials, TokenFile, from_kubeconfig, from_service_account
from falachefe_operator.kubeapi import ApiError, KubeApi
from falachefe_operator.quantity import parse_quantity


async def who(credentials: Credentials) -> str:
    """The user name the API server authenticates these credentials as."""
    api = KubeApi(credentials)
    try:
        _, review = await api.request(
            "POST",
            "/apis/authentication.k8s.io/v1/selfsubjectreviews",
            body={"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"},
        )
    finally:
        await api.close()
    return str(review["status"]["userInfo"]["username"])


def kubeconfig(path: Path, kube: ControlPlane, user: dict[str, Any], **cluster: Any) -> str:
    cluster.setdefault("certificate-authority-data", base64.b64encode(kube.ca_file.read_bytes()).decode())
    cluster = {key: value for key, value in cluster.items() if value is not None}  # None: leave it out
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "c", "cluster": {"server": kube.server, **cluster}}],
        "users": [{"name": "u", "user": user}],
        "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
        "current-context": "x",
    }
    path.write_text(json.dumps(config))
    return str(path)


async def test_a_token_in_the_kubeconfig(kube: ControlPlane, tmp_path: Path) -> None:
    assert await who(from_kubeconfig(str(kube.kubeconfig))) == ADMIN_USER


async def test_a_client_certificate_inline_or_as_files(kube: ControlPlane, tmp_path: Path) -> None:
    crt, key = kube.pki / f"{CERTIFICATE_USER}.crt", kube.pki / f"{CERTIFICATE_USER}.key"
    inline = {
        "client-certificate-data": base64.b64encode(crt.read_bytes()).decode(),
        "client-key-data": base64.b64encode(key.read_bytes()).decode(),
    }
    assert await who(from_kubeconfig(kubeconfig(tmp_path / "inline", kube, inline))) == CERTIFICATE_USER
    # Paths relative to the kubeconfig's directory, as kubectl reads them.
    (tmp_path / "certs").mkdir()
    (tmp_path / "certs" / "u.crt").write_bytes(crt.read_bytes())
    (tmp_path / "certs" / "u.key").write_bytes(key.read_bytes())
    (tmp_path / "ca.crt").write_bytes(kube.ca_file.read_bytes())
    files = {"client-certificate": "certs/u.crt", "client-key": "certs/u.key"}
    path = kubeconfig(tmp_path / "files", kube, files, **{"certificate-authority": "ca.crt"})
    assert await who(from_kubeconfig(path)) == CERTIFICATE_USER


async def test_a_client_certificate_is_presented_when_the_server_is_not_verified(
    kube: ControlPlane, tmp_path: Path
) -> None:
    # insecure-skip-tls-verify skips checking the server, not presenting who we are.
    crt, key = kube.pki / f"{CERTIFICATE_USER}.crt", kube.pki / f"{CERTIFICATE_USER}.key"
    user = {"client-certificate": str(crt), "client-key": str(key)}
    unverified = {"insecure-skip-tls-verify": True, "certificate-authority-data": None}
    assert await who(from_kubeconfig(kubeconfig(tmp_path / "k", kube, user, **unverified))) == CERTIFICATE_USER


async def test_a_kubeconfig_that_does_not_name_the_servers_ca_is_refused(kube: ControlPlane, tmp_path: Path) -> None:
    # No CA: the system's, which did not sign the test API server's certificate.
    config = json.loads(kube.kubeconfig.read_text())
    del config["clusters"][0]["cluster"]["certificate-authority-data"]
    (tmp_path / "k").write_text(json.dumps(config))
    with pytest.raises(Exception, match="CERTIFICATE_VERIFY_FAILED"):
        await who(from_kubeconfig(str(tmp_path / "k")))


async def test_a_token_file_is_read_again_after_a_minute(kube: ControlPlane, tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text(kube.admin_token)
    # The path is the kubeconfig's, relative to its directory.
    from_file = from_kubeconfig(kubeconfig(tmp_path / "k", kube, {"tokenFile": "token"}))
    assert await who(from_file) == ADMIN_USER
    token.write_text("not-a-token")
    clock = Clock()
    credentials = Credentials(server=from_file.server, ssl=from_file.ssl, authorization=TokenFile(token, clock=clock))
    with pytest.raises(ApiError) as refused:
        await who(credentials)
    assert refused.value.status == 401
    # Rotated: the old token is still used until a minute has passed, then the new one.
    token.write_text(kube.admin_token + "\n")
    clock.now = 59.0
    with pytest.raises(ApiError):
        await who(credentials)
    clock.now = 60.0
    assert await who(credentials) == ADMIN_USER


async def test_the_pods_service_account(kube: ControlPlane, tmp_path: Path) -> None:
    (tmp_path / "token").write_text(kube.admin_token)
    (tmp_path / "ca.crt").write_bytes(kube.ca_file.read_bytes())
    host, port = kube.server.removeprefix("https://").rsplit(":", 1)
    environ = {"KUBERNETES_SERVICE_HOST": host, "KUBERNETES_SERVICE_PORT": port}
    assert await who(from_service_account(tmp_path, environ)) == ADMIN_USER
    with pytest.raises(RuntimeError, match="KUBERNETES_SERVICE_PORT"):
        from_service_account(tmp_path, {"KUBERNETES_SERVICE_HOST": host})


async def test_an_exec_plugin_goes_to_the_librarys_loader(kube: ControlPlane, tmp_path: Path) -> None:
    plugin = tmp_path / "plugin"
    credential = {
        "apiVersion": "client.authentication.k8s.io/v1",
        "kind": "ExecCredential",
        "status": {"token": kube.admin_token},
    }
    plugin.write_text(f"#!/bin/sh\necho '{json.dumps(credential)}'\n")
    plugin.chmod(plugin.stat().st_mode | stat.S_IXUSR)
    user = {
        "exec": {"apiVersion": "client.authentication.k8s.io/v1", "command": str(plugin), "interactiveMode": "Never"}
    }
    assert await who(from_kubeconfig(kubeconfig(tmp_path / "k", kube, user))) == ADMIN_USER


async def test_a_kubeconfig_list_is_merged_by_the_librarys_loader(kube: ControlPlane, tmp_path: Path) -> None:
    # As $KUBECONFIG may name several files: the cluster and context in one, the user in the other.
    config = json.loads(kube.kubeconfig.read_text())
    users, config["users"] = config["users"], []
    (tmp_path / "clusters").write_text(json.dumps(config))
    (tmp_path / "users").write_text(json.dumps({"apiVersion": "v1", "kind": "Config", "users": users}))
    merged = f"{tmp_path / 'clusters'}{os.pathsep}{tmp_path / 'users'}"
    assert await who(from_kubeconfig(merged)) == ADMIN_USER


def test_the_operator_runs_without_importing_the_kubernetes_library() -> None:
    # A fresh interpreter, as the operator's process starts: Kopf and every module of the operator loaded.
    probe = (
        "import sys, falachefe_operator.cli, falachefe_operator.credentials, falachefe_operator.scaling.engine\n"
        "print(sorted(m for m in sys.modules if m == 'kubernetes' or m.startswith('kubernetes.')))\n"
        "import kopf._cogs.helpers.thirdparty as t; print(t.V1ObjectMetaSync)\n"
    )
    env = {key: value for key, value in os.environ.items() if key != "PYTHONSTARTUP"}
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, env=env)
    assert result.stdout.splitlines() == ["[]", "None"], result.stdout + result.stderr


QUANTITIES = ["250m", "1", "1.5", "2Ki", "100Mi", "1G", "1e3", "1E", "5n", "3u", "7mi", "0", "-1m", "+1m", "0.1k",
              "1Ei", "1Ti", " 1", "1K", "1e-3m", 3, 2.5, "2ki", "abc", "", "m", "Ki", "1.2.3", "12Zi"]  # fmt: skip


@pytest.mark.parametrize("quantity", QUANTITIES)
def test_quantities_parse_as_the_library_parses_them(quantity: object) -> None:
    def parsed(parse: Any) -> object:
        try:
            return parse(quantity)
        except ValueError as error:
            return f"ValueError: {error}"

    assert parsed(parse_quantity) == parsed(library_parse_quantity)
