"""Run folders: atomic checkpoints, exact resume state, loading a model.

A run folder (RUN_DIR) holds three files, each written atomically (a temporary file
in the same folder, flushed and fsync'ed, then ``os.replace``d over the old one), so
an interrupted write leaves the previous good file in place, never a torn one:

- ``model.safetensors``: the weights (safetensors: no code runs on load).
- ``config.json``: what the run is: ``model_type`` and model ``config`` (together
  they rebuild the model with ``babyssm.models.lm.build_model``), ``num_parameters``,
  ``train_config``, ``stages``, ``stages_completed``, ``chars_seen``,
  ``train_seconds``, per-stage ``stage_results`` and ``run_info`` (seed, package
  and torch versions, git commit). Written last, so it never names weights that
  are not on disk yet.
- ``train_state.pt``: everything ``--resume`` needs to continue *exactly*: a copy of
  the weights, the optimizer state, the RNG states (torch, CUDA, numpy, python and
  each rank's batch generator), the stage index, step, characters and time spent.
  It carries its own copy of the weights so that resuming reads one atomic file:
  a crash between two file writes can never pair new weights with an old optimizer.

Evaluation and generation need only ``load_model(run_dir) -> (model, info)``;
``info["default_levels"]`` is the model's ``default_levels`` of the completed stages
(3 once level 3 is trained, else 2; None for a baseline, which ignores levels).
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import platform
import random
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import safetensors.torch
import torch

import babyssm
from babyssm.errors import BabySSMError
from babyssm.io import atomic_write, atomic_write_bytes, atomic_write_json
from babyssm.models.lm import CharLM, build_model

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
STATE_FILE = "train_state.pt"


def git_commit() -> str:
    """The commit of the repository holding the babyssm package, or "unknown"."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(babyssm.__file__).resolve().parent,
            capture_output=True, text=True, timeout=10, check=True,
        )
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def run_info(seed: int, world_size: int = 1, device: str = "cpu") -> dict[str, Any]:
    """The provenance recorded next to every checkpoint."""
    return {
        "seed": seed,
        "babyssm_version": babyssm.__version__,
        "torch_version": torch.__version__,
        "numpy_version": np.__version__,
        "python_version": platform.python_version(),
        "git_commit": git_commit(),
        "world_size": world_size,
        "device": device,
    }


def rng_state() -> dict[str, Any]:
    """Every global RNG a training step may draw from (diffusion noise, dropout, ...)."""
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        # numpy's MT19937 key as a tensor so the file loads with weights_only=True.
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(
    run_dir: str | os.PathLike,
    model: CharLM,
    record: dict[str, Any],
    train_state: dict[str, Any] | None = None,
) -> None:
    """Write weights, then ``train_state`` (if given), then config.json = ``record`` + model identity."""
    run_dir = Path(run_dir)
    step = str(record.get("step", 0))
    atomic_write(run_dir / WEIGHTS_FILE,
                 lambda tmp: safetensors.torch.save_model(model, str(tmp), metadata={"step": step}))
    if train_state is not None:
        buf = io.BytesIO()
        torch.save(train_state, buf)
        atomic_write_bytes(run_dir / STATE_FILE, buf.getvalue())
    config = {
        "model_type": model.model_type,
        "config": config_dict(model.config),
        "num_parameters": model.num_parameters(),
        **record,
    }
    atomic_write_json(run_dir / CONFIG_FILE, config)


def config_dict(config: Any) -> dict[str, Any]:
    """A dataclass config as it reads back from JSON (tuples become lists)."""
    return json.loads(json.dumps(dataclasses.asdict(config)))


def read_config(run_dir: str | os.PathLike) -> dict[str, Any]:
    """The run's config.json, or a BabySSMError naming what is missing or broken."""
    run_dir = Path(run_dir)
    path = run_dir / CONFIG_FILE
    if not run_dir.is_dir():
        raise BabySSMError(f"run folder {run_dir} does not exist (train one with `babyssm train --out {run_dir}`)")
    if not path.is_file():
        raise BabySSMError(f"{path} is missing: {run_dir} is not a finished checkpoint folder")
    try:
        config = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BabySSMError(f"{path} is corrupt ({e}); restore it or retrain") from None
    for key in ("model_type", "config"):
        if key not in config:
            raise BabySSMError(f"{path} has no {key!r} field; it was not written by babyssm train")
    return config


def load_weights(model: CharLM, run_dir: str | os.PathLike, device: str | torch.device = "cpu",
                 prefixes: tuple[str, ...] | None = None) -> None:
    """Copy the weights saved in ``run_dir`` into ``model`` (same architecture); with
    ``prefixes``, only the parameters whose names start with one of them (the rest keep
    their values), which must all be saved with the same shapes."""
    path = Path(run_dir) / WEIGHTS_FILE
    if not path.is_file():
        raise BabySSMError(f"{path} is missing: {run_dir} holds no trained weights")
    if prefixes is not None:
        saved = safetensors.torch.load_file(path, device=str(device))
        wanted = {k: v for k, v in model.state_dict().items() if k.startswith(prefixes)}
        misfits = sorted(k for k, v in wanted.items() if k not in saved or saved[k].shape != v.shape)
        if misfits:
            raise BabySSMError(f"{path} does not fit the model in {misfits[:5]}: "
                               f"the new config changes parameters of a level it should reuse")
        with torch.no_grad():
            for k, v in wanted.items():
                v.copy_(saved[k])
        return
    try:
        missing, unexpected = safetensors.torch.load_model(model, path, strict=False, device=str(device))
    except Exception as e:  # safetensors raises its own error types for truncated/garbled files
        raise BabySSMError(f"{path} is corrupt or does not fit the model ({type(e).__name__}: {e})") from None
    if missing or unexpected:
        raise BabySSMError(
            f"{path} does not fit the model: missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]}"
        )


def load_model(run_dir: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[CharLM, dict[str, Any]]:
    """Rebuild and load the model saved in ``run_dir``; ``info`` is its config.json plus
    ``trained_levels``, ``default_levels`` (the model's, from its completed stages) and
    ``run_dir``. The model is returned in eval mode."""
    config = read_config(run_dir)
    try:
        model = build_model(config["model_type"], config["config"])
    except (KeyError, TypeError, ValueError) as e:
        raise BabySSMError(f"{Path(run_dir) / CONFIG_FILE}: cannot rebuild the model ({e})") from None
    model.to(device)
    load_weights(model, run_dir, device)
    model.eval()
    info = dict(config)
    info["stages_completed"] = list(config.get("stages_completed", []))
    info["trained_levels"] = list(model.trained_levels(info["stages_completed"]))
    info["default_levels"] = model.default_levels(info["stages_completed"])
    info["run_dir"] = str(run_dir)
    return model, info


def load_train_state(run_dir: str | os.PathLike, device: str | torch.device = "cpu") -> dict[str, Any]:
    """The resume state saved by training (see the module docstring)."""
    path = Path(run_dir) / STATE_FILE
    if not path.is_file():
        raise BabySSMError(f"{path} is missing: nothing to resume in {run_dir} (start without --resume)")
    try:
        return torch.load(path, map_location=device, weights_only=True)
    except Exception as e:  # torch.load raises several types for truncated or foreign files
        raise BabySSMError(f"{path} is corrupt ({type(e).__name__}: {e}); resume is impossible, retrain") from None
