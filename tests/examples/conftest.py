"""The examples are scripts in examples/ (they import each other by module name, as ``python examples/x.py``
does): put that folder on the import path for their tests."""

import sys
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
if str(EXAMPLES) not in sys.path:
    sys.path.insert(0, str(EXAMPLES))
