"""Fixtures: the CRD installed, and the operator running as its chart identity in a namespace of its own.

One operator process per test module (starting one costs a couple of
seconds); the tests of a module use distinct resource names in the
module's namespace. The operator watches only that namespace, so other
tests' resources (and other operators, e.g. the chart's tests) never meet
it.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes import client as k8s
from opkit import Operator, install_crd

from falachefe_devstack.kube import ControlPlane, temporary_namespace
from falachefe_devstack.operator_identity import bind_operator_identity, drop_cluster_grants


@pytest.fixture(scope="session")
def crd_installed(kube: ControlPlane) -> None:
    install_crd(kube)


@pytest.fixture(scope="module")
def op_namespace(request: pytest.FixtureRequest, kube_api: k8s.ApiClient, crd_installed: None) -> Iterator[str]:
    with temporary_namespace(kube_api, request.module.__name__.rsplit(".", 1)[-1]) as name:
        yield name
        drop_cluster_grants(kube_api, name)


@pytest.fixture(scope="module")
def op_workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("operator")


@pytest.fixture(scope="module")
def operator_kubeconfig(kube_api: k8s.ApiClient, kube: ControlPlane, op_namespace: str, op_workdir: Path) -> Path:
    """The operator's identity: a ServiceAccount token bound to exactly rbac-rules.yaml, nothing more."""
    return bind_operator_identity(kube_api, kube, op_namespace, op_workdir)


@pytest.fixture(scope="module")
def operator(operator_kubeconfig: Path, op_namespace: str, op_workdir: Path) -> Iterator[Operator]:
    """The operator, standalone, as its chart identity, watching the module's namespace."""
    process = Operator(operator_kubeconfig, op_namespace, op_workdir, "--standalone").start()
    yield process
    process.stop()
    log = process.log()
    # Everything the module did was allowed by the chart's rules alone.
    assert "Forbidden" not in log, log[-4000:]
