"""Run folders: atomic checkpoints, exact resume state, loading a model.

A run folder (RUN_DIR) holds three files, each written atomically (a temporary file
in the same folder, flushed and fsync'ed, then ``os.replace``d over the old one), so
an interrupted write leaves the previous good file in place, never a torn one:

- ``model.safetensors``: the weights (safetensors: no code runs on load).
- ``config.json``: what the run is: ``model_type`` and model ``config`` (together
  they rebuild the model with ``babyssm.models.lm.build_model``), ``num_parameters``,
  ``train_config``, ``stages``, ``stages_completed``, ``chars_seen``,
  ``train_seconds``, per-stage ``stage_results`` and ``run_info`` (seed, package
  and torch versions, git commit), and the manifest ``checkpoint``: the step and
  sha256 of the weights and train state it goes with. Written last, so it never
  names weights that are not on disk yet; ``load_model`` checks the weights against
  it, so a kill between two renames (weights of step 19 beside the record of step
  10) is refused in one line, and ``train --resume`` rewrites the set from
  ``train_state.pt``. Runs saved before manifests load unchecked.
- ``train_state.pt``: everything ``--resume`` needs to continue *exactly*: a copy of
  the weights, the optimizer state, the RNG states (torch, CUDA, numpy, python and
  each rank's batch generator), the stage index, step, characters and time spent.
  It carries its own copy of the weights so that resuming reads one atomic file:
  a crash between two file writes can never pair new weights with an old optimizer.

Nothing non-finite is ever written: ``save_checkpoint`` checks every tensor and
number first and raises ``NonFiniteError``, and ``load_model`` refuses NaN weights
(saved by versions before the divergence guard).

Evaluation and generation need only ``load_model(run_dir) -> (model, info)``;
``info["default_levels"]`` is the model's ``default_levels`` of the completed stages
(3 once level 3 is trained, else 2; None for a baseline, which ignores levels).
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
import os
import platform
import random
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import safetensors.torch
import torch

import babyssm
from babyssm.errors import BabySSMError
from babyssm.io import atomic_write, atomic_write_json, sha256_file
from babyssm.models.lm import CharLM, build_model

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
STATE_FILE = "train_state.pt"
MANIFEST = "checkpoint"  # config.json's record of the files of its checkpoint: step and sha256 of each
MAX_PARAMETERS = 2**31  # 8 GiB of float32 weights: far past any BabyLM model, refused before allocating


def first_nonfinite(obj: Any, name: str = "") -> str | None:
    """The name of the first NaN or infinite value in ``obj`` (tensors and floats, in nested
    dicts and lists, e.g. a state dict or an optimizer state), or None when all are finite."""
    if isinstance(obj, torch.Tensor):
        return name if obj.is_floating_point() and not bool(torch.isfinite(obj).all()) else None
    if isinstance(obj, float):
        return None if math.isfinite(obj) else name
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, (list, tuple)) else ()
    for key, value in items:
        found = first_nonfinite(value, f"{name}.{key}" if name else str(key))
        if found is not None:
            return found
    return None


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


class NonFiniteError(BabySSMError):
    """A tensor about to be saved (or just loaded) holds NaN or infinity."""


def save_checkpoint(
    run_dir: str | os.PathLike,
    model: CharLM,
    record: dict[str, Any],
    train_state: dict[str, Any] | None = None,
) -> None:
    """Write weights, then ``train_state`` (if given), then config.json = ``record`` + model
    identity + the manifest (each file's step and sha256). Refuses, before writing anything,
    when a weight, an optimizer statistic or a recorded number is not finite."""
    run_dir = Path(run_dir)
    bad = (first_nonfinite(model.state_dict()) or first_nonfinite(record, "config.json")
           or (first_nonfinite(train_state, "train_state") if train_state is not None else None))
    if bad is not None:
        raise NonFiniteError(f"refusing to save a checkpoint to {run_dir}: {bad} is not finite "
                             "(the run diverged); the files already there are kept")
    step = int(record.get("step", 0))
    files: dict[str, dict[str, Any]] = {}

    def write_and_hash(name: str, write: Callable[[Path], None]) -> None:
        def hashed(tmp: Path) -> None:
            write(tmp)
            files[name] = {"step": step, "sha256": sha256_file(tmp)}
        atomic_write(run_dir / name, hashed)

    write_and_hash(WEIGHTS_FILE, lambda tmp: safetensors.torch.save_model(model, str(tmp),
                                                                          metadata={"step": str(step)}))
    if train_state is not None:
        buf = io.BytesIO()
        torch.save(train_state, buf)
        write_and_hash(STATE_FILE, lambda tmp: tmp.write_bytes(buf.getvalue()))
    config = {
        "model_type": model.model_type,
        "config": config_dict(model.config),
        "num_parameters": model.num_parameters(),
        **record,
        MANIFEST: {"step": step, "files": files},
    }
    atomic_write_json(run_dir / CONFIG_FILE, config)


def config_dict(config: Any) -> dict[str, Any]:
    """A dataclass config as it reads back from JSON (tuples become lists)."""
    return json.loads(json.dumps(dataclasses.asdict(config)))


def read_config(run_dir: str | os.PathLike, flag: str = "--run") -> dict[str, Any]:
    """The run's config.json, or a BabySSMError naming what is missing or broken."""
    run_dir = Path(run_dir)
    path = run_dir / CONFIG_FILE
    if run_dir.exists() and not run_dir.is_dir():
        raise BabySSMError(f"{flag} {run_dir} is a file; pass the run folder that holds {CONFIG_FILE}")
    if not run_dir.is_dir():
        raise BabySSMError(f"run folder {run_dir} does not exist (train one with `babyssm train --out {run_dir}`)")
    if not path.is_file():
        raise BabySSMError(f"{path} is missing: {run_dir} is not a finished checkpoint folder")
    try:
        config = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BabySSMError(f"{path} is corrupt ({e}); restore it or retrain") from None
    if not isinstance(config, dict):
        raise BabySSMError(f"{path} holds a JSON {type(config).__name__}, not an object; it was not written by "
                           "babyssm train")
    for key in ("model_type", "config"):
        if key not in config:
            raise BabySSMError(f"{path} has no {key!r} field; it was not written by babyssm train")
    if not isinstance(config["config"], dict):
        raise BabySSMError(f"{path}: field 'config' must be an object of model settings, got "
                           f"{type(config['config']).__name__} {config['config']!r:.60}")
    return config


def build_from_config(config: dict[str, Any], where: str | os.PathLike) -> CharLM:
    """The model a config.json describes (``read_config``'s dict), or a one-line error naming
    ``where`` and the bad field. Sizes are checked on the meta device first, so an absurd
    size is refused before any memory is allocated."""
    try:
        try:
            with torch.device("meta"):
                n = build_model(config["model_type"], config["config"]).num_parameters()
        except (NotImplementedError, RuntimeError):  # a model whose init needs real values: no preview
            n = 0
        if n > MAX_PARAMETERS:
            sizes = {k: v for k, v in config["config"].items() if isinstance(v, int) and not isinstance(v, bool)}
            raise BabySSMError(f"{where}: the config describes {n:,} parameters, more than babyssm's limit of "
                               f"{MAX_PARAMETERS:,} ({', '.join(f'{k}={v}' for k, v in sizes.items())}); "
                               "fix the sizes")
        return build_model(config["model_type"], config["config"])
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        message = str(e).strip("'\"") if isinstance(e, KeyError) else str(e)
        raise BabySSMError(f"{where}: cannot build the model ({message})") from None


def fit_check(model: CharLM, shapes: dict[str, tuple[int, ...]], where: str | os.PathLike,
              against: str = "the model config") -> None:
    """One line naming the tensors whose saved shapes differ from ``model``'s."""
    own = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    misfits = [k for k in own if k in shapes and tuple(shapes[k]) != own[k]]
    if misfits:
        k = misfits[0]
        raise BabySSMError(f"{where} does not fit {against}: {k} is {list(shapes[k])} in the file, "
                           f"{list(own[k])} in the config ({len(misfits)} tensors differ); the two come from "
                           "different runs or presets")


def verify_file(run_dir: str | os.PathLike, name: str, config: dict[str, Any]) -> bool:
    """True when ``name`` matches config.json's manifest; False for a run saved before manifests;
    a BabySSMError when it does not match (damaged, or left by a save that was killed)."""
    entry = (config.get(MANIFEST) or {}).get("files", {}).get(name)
    if entry is None:
        return False
    path = Path(run_dir) / name
    if not path.is_file() or sha256_file(path) != entry["sha256"]:
        fix = (f"run `babyssm train --out {run_dir} --resume` (with its --data) to rewrite it from {STATE_FILE}"
               if (Path(run_dir) / STATE_FILE).is_file() else "restore it from a copy or retrain")
        raise BabySSMError(f"{path} is {'missing' if not path.is_file() else 'not the file'} that "
                           f"{Path(run_dir) / CONFIG_FILE} records for step {entry['step']} (sha256 mismatch: "
                           f"damaged, or a save was interrupted); {fix}")
    return True


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
        with safetensors.safe_open(str(path), "pt") as f:
            shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except Exception as e:  # safetensors raises its own error types for truncated/garbled files
        raise BabySSMError(f"{path} is corrupt ({type(e).__name__}: {' '.join(str(e).split())})") from None
    fit_check(model, shapes, path, f"{Path(run_dir) / CONFIG_FILE}")
    try:
        missing, unexpected = safetensors.torch.load_model(model, path, strict=False, device=str(device))
    except Exception as e:  # safetensors raises its own error types for truncated/garbled files
        raise BabySSMError(f"{path} is corrupt or does not fit the model ({type(e).__name__}: "
                           f"{' '.join(str(e).split())})") from None
    if missing or unexpected:
        raise BabySSMError(
            f"{path} does not fit the model: missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]}"
        )


def check_finite(model: CharLM, path: str | os.PathLike) -> None:
    bad = first_nonfinite(model.state_dict())
    if bad is not None:
        raise NonFiniteError(f"{path} holds non-finite weights ({bad} has NaN or infinity): the run diverged; "
                             "use an earlier checkpoint or retrain")


def load_model(run_dir: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[CharLM, dict[str, Any]]:
    """Rebuild and load the model saved in ``run_dir``; ``info`` is its config.json plus
    ``trained_levels``, ``default_levels`` (the model's, from its completed stages) and
    ``run_dir``. The weights file is checked against config.json's manifest (runs saved
    before manifests: not checked) and for non-finite values. The model is returned in
    eval mode."""
    config = read_config(run_dir)
    model = build_from_config(config, Path(run_dir) / CONFIG_FILE)
    verify_file(run_dir, WEIGHTS_FILE, config)
    model.to(device)
    load_weights(model, run_dir, device)
    check_finite(model, Path(run_dir) / WEIGHTS_FILE)
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
