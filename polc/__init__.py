"""polc: compile Kubernetes and Cilium network policy to verified eBPF."""

import os as _os

__version__ = "0.1.0"

# In a source checkout the subpackages live beside this folder (compiler/, runtime/, ...);
# installed, they are inside it.  Make `python -m polc.cli` work from the checkout too, where
# this folder shadows the installed package.
_root = _os.path.dirname(_os.path.dirname(_os.path.abspath(__file__)))
if _os.path.isfile(_os.path.join(_root, "pyproject.toml")) and _os.path.isdir(_os.path.join(_root, "compiler")):
    __path__.append(_root)  # noqa: F821 (set by the import system)
