"""The Falachefe operator: ``Falachefe`` resources reconciled into worker pools, and autoscaled.

From the API types to the process, each module named after what it does:

- ``resource``, ``spec``, ``status``: the resource's identity, its spec and
  status models (pydantic, camelCase on the wire); ``crd`` generates the
  CRD from them (``python -m falachefe_operator.crd --write``);
- ``naming``, ``builders``: names and labels, and the pure function from a
  spec to the owned manifests (ConfigMap, metrics Service, a Deployment
  and a PodDisruptionBudget per pool); ``conditions``: the condition list;
- ``kubeapi``: a small asyncio API client (server-side apply);
  ``apply``: secrets checked, objects applied, removed pools pruned;
- ``autoscaling``: the seam to the autoscaler engine in ``scaling``;
- ``controller``: one loop per resource (reconcile, autoscale, status),
  fed by ``handlers`` (Kopf's watch events and settings);
- ``leader``, ``health``, ``metrics``, ``cli``: running it
  (``falachefe-operator``).
"""

import sys


def _import_kopf_without_the_kubernetes_client() -> None:
    """Import Kopf as if the ``kubernetes`` library were not installed.

    Kopf imports that library when it can, only to recognise its model
    classes (the operator passes dicts), and importing any of it loads every
    API class and model: 40 MiB of the operator's resident memory (bench/README.md). The
    operator reads its credentials without it (``credentials``). Nothing
    changes when either is already imported (a test session, a REPL).
    """
    if "kopf" in sys.modules or "kubernetes" in sys.modules:
        return
    sys.modules["kubernetes"] = None  # type: ignore[assignment]  # an import of it raises ImportError
    try:
        import kopf  # noqa: F401, PLC0415 - this import is the point
    finally:
        del sys.modules["kubernetes"]


_import_kopf_without_the_kubernetes_client()
