"""The Hugging Face export: ``babyssm export`` and the remote code it ships.

A remote-code module here (``modeling_babyssm``) imports the model's own modules by
relative import (``from .levels import ...``), as it will sit beside copies of them in an
exported folder. Inside the package the same names are registered as aliases of the
``babyssm.models`` modules each ``HFExport`` names, so the wrapper also imports (and is
tested) in place, running the very modules babyssm trains with.
"""

from __future__ import annotations

import importlib
import sys

from babyssm.models.lm import registered_models


def _alias_model_modules() -> None:
    for cls in registered_models():
        for name in cls.hf_export.modules if cls.hf_export else ():
            sys.modules.setdefault(f"{__name__}.{name}", importlib.import_module(f"babyssm.models.{name}"))


_alias_model_modules()
