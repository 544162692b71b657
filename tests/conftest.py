"""Make ``tests.support`` importable under plain ``pytest`` and register its fixtures."""

import sys
from pathlib import Path

_ROOT = str(Path(__file__).resolve().parent.parent)
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

pytest_plugins = ["tests.support.fixtures"]
