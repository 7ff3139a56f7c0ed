"""Where a result came from: moved to :mod:`robustprior.training.provenance` (this name stays for the recipes that import it)."""
from __future__ import annotations

from robustprior.training.provenance import git_commit

__all__ = ["git_commit"]
