"""Fixtures every test module shares: one torch thread, and the shared data folder.

Helpers that test modules import (toy models, a prepared corpus) live in
``tests/helpers.py``: no test module imports another.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def one_thread():
    """Tiny models gain nothing from intra-op threads, which only spin on a busy 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def data_root() -> Path:
    """The shared data folder: $BABYSSM_DATA, else /work/shared/data.

    CI always has it (``.ci/run`` points BABYSSM_DATA at ../shared/data), so missing
    data fails the tests that need it instead of skipping them: a skip would pass
    silently with half the suite unrun.
    """
    root = Path(os.environ.get("BABYSSM_DATA", "/work/shared/data"))
    missing = [name for name in ("babylm", "eval") if not (root / name).is_dir()]
    if missing:
        pytest.fail(f"test data not found: {root} has no {' or '.join(f'{m}/' for m in missing)}; "
                    "set BABYSSM_DATA to the shared data folder (see its README.md)", pytrace=False)
    return root
