"""bench/compare is run as ``python -m bench.compare`` from the repository root, not
installed; put the root on the path so these tests import it however pytest is started."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = str(Path(__file__).resolve().parents[2])
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
