"""The chart's CRDs are the repository's CRDs, byte for byte."""

from __future__ import annotations

from pathlib import Path

import yaml
from helmchart import CHART, REPO


def _crd_files(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.glob("*.yaml")) if p.is_file()}


def test_chart_crds_are_byte_identical_to_the_repository_crds() -> None:
    """One source of truth: crds/ is the original; fix drift with `cp crds/*.yaml helm/falachefe-operator/crds/`."""
    repo_crds = {
        name: data
        for name, data in _crd_files(REPO / "crds").items()
        if all(doc and doc.get("kind") == "CustomResourceDefinition" for doc in yaml.safe_load_all(data))
    }
    assert repo_crds, "crds/ holds no CustomResourceDefinition"
    assert _crd_files(CHART / "crds") == repo_crds
    assert not [p for p in (CHART / "crds").iterdir() if p.suffix != ".yaml"], "the chart's crds/ holds only CRDs"
