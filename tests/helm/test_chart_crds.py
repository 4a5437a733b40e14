"""The charts follow crds/: the operator chart's CRD templates (their spec as it is), the falachefe chart's schema."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import yaml
from helmchart import CHART, REPO, Helm, objects_of


def _repo_crds() -> dict[str, dict[str, Any]]:
    """crds/'s CustomResourceDefinitions (not the samples), by name."""
    found = {}
    for path in sorted((REPO / "crds").glob("*.yaml")):
        documents = [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
        if documents and all(doc.get("kind") == "CustomResourceDefinition" for doc in documents):
            found.update({doc["metadata"]["name"]: doc for doc in documents})
    return found


def test_the_chart_renders_every_crd_of_the_repository_with_its_spec_unchanged(helm: Helm) -> None:
    repo_crds = _repo_crds()
    assert repo_crds, "crds/ holds no CustomResourceDefinition"
    rendered = {m["metadata"]["name"]: m for m in objects_of(helm.template(), "CustomResourceDefinition")}
    assert sorted(rendered) == sorted(repo_crds), "run: python helm/sync.py --write"
    for name, crd in repo_crds.items():
        assert rendered[name]["spec"] == crd["spec"], name
        metadata = rendered[name]["metadata"]
        # `helm uninstall` leaves the CRD, and with it every Falachefe, in place.
        assert metadata["annotations"]["helm.sh/resource-policy"] == "keep"
        assert metadata["labels"].items() >= crd["metadata"]["labels"].items()
        assert metadata["labels"]["app.kubernetes.io/managed-by"] == "Helm"


def test_the_crd_is_left_out_with_crds_install_false(helm: Helm) -> None:
    manifests = helm.template({"crds": {"install": False}})
    assert objects_of(manifests, "CustomResourceDefinition") == []
    assert objects_of(manifests, "Deployment"), "the rest of the chart still renders"


def test_the_chart_has_no_crds_directory() -> None:
    """Helm installs a chart's crds/ once and never upgrades it: the CRDs are templates instead."""
    assert not (CHART / "crds").exists()


def test_charts_are_in_step_with_crds() -> None:
    """`helm/sync.py --check`: what a changed CRD needs (the templates, the falachefe chart's schema)."""
    result = subprocess.run(
        [sys.executable, str(REPO / "helm" / "sync.py"), "--check"], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
