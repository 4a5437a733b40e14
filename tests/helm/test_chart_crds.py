"""The charts follow crds/: the operator chart's CRDs byte for byte, the falachefe chart's values schema."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml
from helmchart import CHART, REPO


def _crd_files(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.glob("*.yaml")) if p.is_file()}


def test_chart_crds_are_byte_identical_to_the_repository_crds() -> None:
    repo_crds = {
        name: data
        for name, data in _crd_files(REPO / "crds").items()
        if all(doc and doc.get("kind") == "CustomResourceDefinition" for doc in yaml.safe_load_all(data))
    }
    assert repo_crds, "crds/ holds no CustomResourceDefinition"
    assert _crd_files(CHART / "crds") == repo_crds, "run: python helm/sync.py --write"
    assert sorted(p.name for p in (CHART / "crds").iterdir()) == sorted(repo_crds), "the chart's crds/ holds only CRDs"


def test_charts_are_in_step_with_crds() -> None:
    """`helm/sync.py --check`: what a changed CRD needs (the copy above, the falachefe chart's schema)."""
    result = subprocess.run(
        [sys.executable, str(REPO / "helm" / "sync.py"), "--check"], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
