"""Import scripts/<name>.py for tests under a private module name.

Putting scripts/ on sys.path would let scripts/evaluate.py shadow the ``evaluate`` library for
every later test in the session.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


def load_script(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"_sam_hf_script_{name}", SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
