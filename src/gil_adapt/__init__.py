"""gil-adapt: where every Python thread's time goes, and thread pools that stay at their best size.

Measure -> decide -> act:

* :func:`capabilities`, :func:`snapshot`, :func:`measure` — the per-thread ledger (C core).
"""
from __future__ import annotations

from ._ledger import calm_gil, capabilities, install, measure, snapshot, uninstall
from .executor import AdaptiveExecutor
from .metrics import metrics_text, serve_metrics

__all__ = ["AdaptiveExecutor", "calm_gil", "capabilities", "install", "measure", "metrics_text",
           "serve_metrics", "snapshot", "uninstall"]
try:  # one source: the version the package was installed with (pyproject.toml)
    from importlib.metadata import PackageNotFoundError, version as _version

    __version__ = _version("gil-adapt")
except (ImportError, PackageNotFoundError):  # run from a source tree, not installed
    __version__ = "0+unknown"
