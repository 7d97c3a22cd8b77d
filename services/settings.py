"""Settings in one place: paths and defaults read from the environment."""

from __future__ import annotations

import os
from pathlib import Path

#: Where converted model weights and reward caches live (survives reruns).
CACHE_DIR = Path(os.environ.get("PERSYN_CACHE_DIR", Path.home() / ".cache" / "persyn"))

#: Default combination weight of learnability against quality (SPEC step 5).
DEFAULT_ALPHA = 0.4

#: Default number of calibration prompts (SPEC step 1).
DEFAULT_CALIBRATION_SIZE = 2500
