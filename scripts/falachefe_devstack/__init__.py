"""The local stack: real PostgreSQL, Redis and a Kubernetes control plane on loopback.

Used by the test suite's fixtures and by the demo. Every server runs from a
temporary directory on a free port and dies with the process that started
it; nothing depends on a system service being up.
"""
