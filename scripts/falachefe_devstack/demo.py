"""The demo: for now, the local stack up until Ctrl-C (grows with the operator and workers)."""

from __future__ import annotations

import sys

from .stack import main as stack_main

if __name__ == "__main__":
    sys.argv = [sys.argv[0], "up", *sys.argv[1:]]
    raise SystemExit(stack_main())
