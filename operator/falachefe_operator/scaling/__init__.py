"""Autoscaling of worker pools on queue depth, queue rates and CPU.

Layers, from pure to I/O (import-linter keeps the pure ones free of I/O):

- ``policy``, ``observation``, ``rates``, ``history``, ``decision``: the
  decision, a pure function of the policy, what was observed and the recent
  history (no clock, no sockets), so it can be property-tested and replayed
  in the simulation benchmark;
- ``queue`` (bullmq counts from Redis) and ``cpu`` (metrics.k8s.io plus the
  pods' requests): the readers, which turn every failure into a
  ``MetricUnavailable`` rather than an exception;
- ``engine``: one pool per ``step()``: read, decide, write the Deployment's
  scale subresource, report;
- ``metrics``: the Prometheus series for every input and output.

This package's ``__init__`` imports nothing, so importing the decision does
not drag in the readers' I/O modules.
"""
