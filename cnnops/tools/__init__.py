"""The commands behind `python -m cnnops`: check, bench, train (and tune), and what they share.

`import cnnops` needs only torch and numpy; the commands may need the `tools` extra (tqdm,
matplotlib, scikit-learn). `MissingExtra` carries the install line to print instead of a bare
ImportError.
"""
from __future__ import annotations

import importlib.util

# import name -> the distribution that provides it (all three are in the `tools` extra)
EXTRA_PACKAGES = {"tqdm": "tqdm", "matplotlib": "matplotlib", "sklearn": "scikit-learn"}
INSTALL_HINT = ('pip install -e ".[tools]" in the repository (or: pip install '
                'tqdm matplotlib scikit-learn)')


class MissingExtra(ImportError):
    """A command needs a package of the optional `tools` extra that is not installed."""


def require(what: str, *modules: str) -> None:
    """Raises MissingExtra, naming the install command, if any of `modules` is missing."""
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        names = ", ".join(EXTRA_PACKAGES.get(m, m) for m in missing)
        raise MissingExtra(f"{what} needs {names} (not installed): {INSTALL_HINT}")
