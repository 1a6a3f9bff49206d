"""User-facing errors and where data lives.

A ``BabySSMError`` is bad input or a bad environment the user can fix: the CLI
prints its message as one line (``babyssm: error: ...``) and exits with status 2,
never a traceback. Messages name the file, line or field and say what to do.
"""

from __future__ import annotations

import os
from pathlib import Path

DATA_ENV = "BABYSSM_DATA"


class BabySSMError(Exception):
    """An error caused by input or environment, reported to the user in one line."""


def data_root(explicit: str | os.PathLike | None = None) -> Path:
    """The data folder (holding ``babylm/`` and ``eval/``): ``explicit``, else $BABYSSM_DATA.

    Raises BabySSMError with instructions when neither is set or the folder is missing.
    """
    value = explicit if explicit is not None else os.environ.get(DATA_ENV)
    if not value:
        raise BabySSMError(
            f"no data folder given: pass --data DIR or set {DATA_ENV} to a folder holding "
            "babylm/ and eval/ (run `babyssm download` to fetch the official release)"
        )
    path = Path(value).expanduser()
    if not path.exists():
        raise BabySSMError(f"data folder {path} does not exist (from {'--data' if explicit else DATA_ENV})")
    return path


def check_device(name: str) -> str:
    """``name`` ("cpu", "cuda" or "cuda:N") if this machine has it, else a BabySSMError."""
    import torch  # only here: the rest of this module must stay importable without it

    if name.split(":")[0] not in ("cpu", "cuda"):
        raise BabySSMError(f"--device {name}: choose cpu or cuda")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise BabySSMError(f"--device {name}: CUDA is not available (torch {torch.__version__}); use --device cpu")
    return name
