"""What is running: the labels of both programs' ``*_build_info`` series.

The version is the installed distribution's; the source revision is the
one the image was built from, passed in at build time as
``FALACHEFE_BUILD_REVISION`` (the image's ``REVISION`` build argument), and
``unknown`` when the program runs from a checkout.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform

DISTRIBUTION = "falachefe-operator"
REVISION_ENV = "FALACHEFE_BUILD_REVISION"


def build_info() -> dict[str, str]:
    """``{"version": ..., "revision": ..., "python": ...}``."""
    return {
        "version": importlib.metadata.version(DISTRIBUTION),
        "revision": os.environ.get(REVISION_ENV) or "unknown",
        "python": platform.python_version(),
    }
