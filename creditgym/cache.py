"""The one folder creditgym caches derived files in: converted models, Shop catalogs, parsed Boxoban level sets."""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    """`$CREDITGYM_CACHE`, else `$XDG_CACHE_HOME/creditgym`, else `~/.cache/creditgym`."""
    if os.environ.get("CREDITGYM_CACHE"):
        return Path(os.environ["CREDITGYM_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "creditgym"
