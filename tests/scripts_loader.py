"""Import scripts/<name>.py (or benchmarks/, recipes/) for tests under a private module name.

Putting scripts/ on sys.path would let scripts/evaluate.py shadow the ``evaluate`` library for
every later test in the session.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ROOT / "scripts"


def load_script(name: str, folder: str = "scripts") -> ModuleType:
    path = ROOT / folder / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"_sam_hf_{folder}_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
