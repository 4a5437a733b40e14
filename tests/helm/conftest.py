"""Fixtures: Helm without a cluster (lint, template) and with the local control plane."""

from __future__ import annotations

from pathlib import Path

import pytest
from helmchart import Helm, apply_crd

from falachefe_devstack import toolchain
from falachefe_devstack.kube import ControlPlane


@pytest.fixture(scope="session")
def helm_binary() -> Path:
    return toolchain.ensure_helm() / "helm"


@pytest.fixture
def helm(helm_binary: Path, tmp_path: Path) -> Helm:
    """Helm without a cluster: lint and template."""
    return Helm(helm_binary, tmp_path)


@pytest.fixture(scope="session")
def crd_applied(kube: ControlPlane) -> None:
    """The Falachefe CRD, once per control plane: the releases the tests install leave it alone."""
    apply_crd(kube)


@pytest.fixture
def cluster_helm(helm_binary: Path, kube: ControlPlane, crd_applied: None, tmp_path: Path) -> Helm:
    """Helm with the local control plane's admin kubeconfig: install, upgrade, uninstall."""
    return Helm(helm_binary, tmp_path, kube.kubeconfig)
