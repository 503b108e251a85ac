import json
import os
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, settings

ROOT = Path(__file__).resolve().parent.parent

settings.register_profile(
    "ci", max_examples=60, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile("dev", max_examples=200, deadline=None)
settings.load_profile("ci" if os.environ.get("CI") else "dev")


@pytest.fixture(scope="session")
def vectors():
    return json.loads((ROOT / "specs" / "golden" / "vectors.json").read_text())


def words(hex_words):
    """Hex strings -> int32 words, bit for bit."""
    return np.array([int(w, 16) for w in hex_words], dtype=np.uint32).view(np.int32)
