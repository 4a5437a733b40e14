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
