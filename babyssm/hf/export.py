"""``babyssm export``: a run folder -> a Hugging Face model folder the BabyLM pipeline loads.

Symbols: V vocabulary (128), c a character, id(c) its 7-bit ASCII code.

An exported folder (HF_DIR) holds:

- the model's remote code: the files its ``HFExport`` names (``CharLM.hf_export``),
  copied verbatim: for the hierarchical model ``modeling_babyssm.py`` (a thin
  transformers wrapper from ``babyssm/hf/``) beside ``config.py``, ``scan.py`` and
  ``levels.py`` from ``babyssm/models/``, the very modules babyssm trains with (torch
  only), named in ``config.json``'s ``auto_map``;
- ``config.json``, ``generation_config.json``, ``model.safetensors`` (the run's
  state dict under babyssm's own names);
- ``tokenizer.json`` (a ``tokenizers`` character tokenizer), ``tokenizer_config.json``
  and ``special_tokens_map.json`` (``tokenizer_class`` set explicitly:
  ``PreTrainedTokenizerFast``, which both transformers 4.51 and 5.x resolve);
- ``README.md``: where it came from and how to load it.

so that, on any machine with torch and transformers (4.51.3, the BabyLM 2025
pipeline's pin, or 5.x):

    model = AutoModelForCausalLM.from_pretrained(HF_DIR, trust_remote_code=True)
    tokenizer = AutoTokenizer.from_pretrained(HF_DIR)

``config.json`` carries every field of the model's config (the remote code rebuilds
the same dataclass from them) and, for a model with levels, the ``levels`` it runs. A
new model family plugs in by setting ``hf_export`` on its class: its wrapper in
``babyssm/hf/`` and its torch-only modules in ``babyssm/models/``.

The tokenizer: token id = ASCII code, as in ``babyssm.data.vocab`` (vocabulary: the 128
one-character strings chr(0) .. chr(127)); every character is one token, with its
offsets. Special tokens are unused control codes, so no text babyssm scores can
collide with them: BOS = id 0 (chr(0), prepended to every sequence as babyssm
does), EOS = 3 (ETX, "end of text"), PAD = 4 (EOT), UNK = 26 (SUB, "substitute").
The model never saw EOS, PAD or UNK in training: generation never emits them
(``suppress_tokens`` masks every non-text symbol, as ``babyssm generate`` does) and
runs to ``max_new_tokens``. Decoding fuses the characters back, so text round-trips
(newlines included).

Cleaning: babyssm folds Unicode with ``anyascii`` (``babyssm.data.clean``), which the
``tokenizers`` library cannot run. The tokenizer's normalizer does this subset of
``babyssm.data.clean.clean_text``, in the same order: CRLF/CR -> LF; the punctuation
folds of ``babyssm.data.clean.punctuation_folds`` (quotes, dashes, guillemets, odd
spaces: generated from the cleaning code, so they fold as ``clean_text`` folds them);
NFKD + accent stripping (``naïve`` -> ``naive``, ``ﬁ`` -> ``fi``, ``…`` -> ``...``,
full-width -> ASCII); tab/VT/FF -> space; other
control codes dropped; runs of ``min_symbol_run`` identical symbols -> a space; space
runs collapsed and spaces before a newline removed. Unlike ``clean_text`` it keeps a
final space: evaluation code encodes prefixes (BabyLM's reading task extends a
context one character at a time, lm-eval encodes a context apart from its
continuation), where a trailing space is part of the context. Whatever is still not
ASCII (``ß``, ``日``, ``£``: anyascii gives ``ss``, ``Ri``, ``GBP``) becomes UNK. On
ASCII text and on the folds above, without trailing spaces, it gives exactly
``encode(clean_text(text))`` (tested); feed it cleaned text for exact agreement.

Writing: the folder is written beside ``--out`` as ``.NAME.babyssm-export.XXXXXXXX``
(``tempfile.mkdtemp``), then renamed into place. Its first file, ``STAGING_MARKER``,
lists the files the export will write, and the export holds an ``fcntl.flock`` on it
until the rename; the kernel drops the lock when the writer dies (SIGKILL included).
A killed export's folder is therefore recognisable, and the next export removes it
(``remove_stale_staging``) when its name has that form, its marker is unlocked, and it
holds nothing but plain files the marker lists: nothing a user put there, nothing a
running export is still writing.

>>> tok = build_tokenizer()
>>> enc = tok.encode("Café “ok”")
>>> enc.ids, enc.offsets[:3]
([0, 67, 97, 102, 101, 32, 34, 111, 107, 34], [(0, 0), (0, 1), (1, 2)])
>>> tok.decode(enc.ids)
'Cafe "ok"'
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import os
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import safetensors.torch
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

import babyssm
from babyssm.training.checkpoint import load_model, read_config
from babyssm.models.lm import CharLM, HFExport
from babyssm.errors import BabySSMError
from babyssm.data.clean import punctuation_folds
from babyssm.io import umask
from babyssm.data.vocab import BOS_ID, TEXT_IDS, VOCAB_SIZE

EOS_ID = 3  # ASCII ETX (end of text)
PAD_ID = 4  # ASCII EOT
UNK_ID = 26  # ASCII SUB (substitute): a character the vocabulary lacks
TOKENIZER_CLASS = "PreTrainedTokenizerFast"
MILESTONE_DIR = "milestones"  # RUN_DIR/milestones/words_1M/ ... (written by training)
# What an export writes besides its remote code (whose names config.json's babyssm_export.files lists).
# The temporary folder beside --out (see the module docstring) and its first file.
STAGING_TAG = "babyssm-export"
STAGING_NAME = re.compile(r"^\..+\.babyssm-export\.[a-z0-9_]{8}$")  # mkdtemp's 8 random characters
STAGING_MARKER = ".babyssm-export-staging"  # JSON {"pid", "files"}; locked while its export runs
EXPORT_FILES = ("config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
                "tokenizer_config.json", "special_tokens_map.json", "README.md")


def build_tokenizer(min_symbol_run: int = 4) -> Tokenizer:
    """The character tokenizer (see the module docstring); ``min_symbol_run`` as in prepare."""
    vocab = {chr(i): i for i in range(VOCAB_SIZE)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token=chr(UNK_ID)))
    symbol = r"[!-/:-@\[-`{-~]"  # ASCII punctuation, as babyssm.data.clean's symbol class
    tok.normalizer = normalizers.Sequence([
        normalizers.Replace("\r\n", "\n"),
        normalizers.Replace("\r", "\n"),
        *[normalizers.Replace(k, v) for k, v in punctuation_folds().items()],
        normalizers.NFKD(),
        normalizers.StripAccents(),
        normalizers.Replace(Regex("[\t\x0b\x0c]"), " "),
        normalizers.Replace(Regex("[\x00-\x08\x0e-\x1f\x7f]"), ""),
        normalizers.Replace(Regex(f"({symbol})\\1{{{min_symbol_run - 1},}}"), " "),
        normalizers.Replace(Regex(" {2,}"), " "),
        normalizers.Replace(Regex(" +\n"), "\n"),
    ])
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")  # one token per character
    bos, eos = chr(BOS_ID), chr(EOS_ID)
    # A pair (fine-tuning on two sentences) is joined by EOS: BOS a EOS b.
    tok.post_processor = processors.TemplateProcessing(single=[bos, "$A"], pair=[bos, "$A", eos, "$B:1"],
                                                       special_tokens=[(bos, BOS_ID), (eos, EOS_ID)])
    tok.decoder = decoders.Fuse()
    tok.add_special_tokens([chr(i) for i in (BOS_ID, EOS_ID, PAD_ID, UNK_ID)])
    return tok


def special_tokens() -> dict[str, str]:
    return {"bos_token": chr(BOS_ID), "eos_token": chr(EOS_ID), "pad_token": chr(PAD_ID), "unk_token": chr(UNK_ID)}


def hf_config(model: CharLM, levels: int | None, provenance: dict[str, Any]) -> dict[str, Any]:
    """config.json of the exported model (hand-written: the same file for every transformers version)."""
    spec = model.hf_export
    fields = {f.name: getattr(model.config, f.name) for f in dataclasses.fields(model.config) if f.init}
    return {
        "architectures": [spec.auto_map["AutoModelForCausalLM"]],
        "auto_map": {auto: f"{spec.remote_code}.{name}" for auto, name in spec.auto_map.items()},
        "model_type": spec.model_type,
        **json.loads(json.dumps(fields)),  # tuples as JSON lists
        **({} if levels is None else {"levels": levels}),
        "scan_kernel": "auto",
        "bos_token_id": BOS_ID, "eos_token_id": EOS_ID, "pad_token_id": PAD_ID,
        "tie_word_embeddings": False,
        "use_cache": True,
        "torch_dtype": "float32",
        "babyssm_export": provenance,
    }


def remote_code_files(spec: HFExport) -> dict[str, Path]:
    """Exported file name -> the babyssm source file copied verbatim to it."""
    package = Path(__file__).resolve().parents[1]  # babyssm/
    files = {f"{spec.remote_code}.py": package / "hf" / f"{spec.remote_code}.py"}
    files.update({f"{name}.py": package / "models" / f"{name}.py" for name in spec.modules})
    return files


def generation_config() -> dict[str, Any]:
    never = [i for i in range(VOCAB_SIZE) if i not in TEXT_IDS]  # BOS and the unused control codes
    return {"bos_token_id": BOS_ID, "eos_token_id": EOS_ID, "pad_token_id": PAD_ID, "suppress_tokens": never}


def tokenizer_config() -> dict[str, Any]:
    return {"tokenizer_class": TOKENIZER_CLASS, **special_tokens(), "clean_up_tokenization_spaces": False,
            "padding_side": "right", "model_input_names": ["input_ids", "attention_mask"]}


def _readme(provenance: dict[str, Any]) -> str:
    return (f"# babyssm hierarchical character SSM\n\nExported by `babyssm export` from `{provenance['run_dir']}` "
            f"({provenance['num_parameters']:,} parameters, levels {provenance['levels']}, "
            f"{'uncounted' if provenance['words_seen'] is None else provenance['words_seen']} words / "
            f"{provenance['chars_seen']} characters seen).\n\n"
            "```python\nfrom transformers import AutoModelForCausalLM, AutoTokenizer\n"
            "model = AutoModelForCausalLM.from_pretrained(PATH, trust_remote_code=True)\n"
            "tokenizer = AutoTokenizer.from_pretrained(PATH, trust_remote_code=True)\n```\n\n"
            "One token per character (id = ASCII code, BOS = 0); see babyssm's docs/BABYLM.md.\n")


def _min_symbol_run(info: dict[str, Any]) -> int:
    """The prepared corpus' cleaning setting, when its meta.json is still where training read it."""
    meta = Path(str(info.get("data", ""))) / "meta.json"
    try:
        return int(json.loads(meta.read_text())["config"]["min_symbol_run"])
    except (OSError, ValueError, KeyError, TypeError):
        return 4


def export_run(run_dir: str | Path, out_dir: str | Path, levels: int | None = None, force: bool = False) -> Path:
    """Write the HF folder of the hierarchical model in ``run_dir``; returns ``out_dir``.

    ``levels`` defaults to the run's own (``info["default_levels"]``: 3 once level 3 is trained, else 2). The
    folder appears whole (written beside it, then renamed); ``force`` replaces an earlier
    export, never anything else, and no ``out_dir`` may be, contain or lie inside ``run_dir``.
    """
    out_dir = Path(out_dir)
    check_out(run_dir, out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        if not force:
            raise BabySSMError(f"{out_dir} exists and is not empty; pass --force to replace it")
        stranger = not_exported(out_dir)
        if stranger is not None:
            raise BabySSMError(f"--force replaces only a folder that babyssm export wrote, and {out_dir} holds "
                               f"{stranger}; move it away yourself or choose another --out")
    model, info = load_model(run_dir)
    if model.hf_export is None:
        raise BabySSMError(f"{run_dir} holds a {model.model_type}, which has no Hugging Face export")
    levels = levels or info["default_levels"]
    if levels not in (2, 3, None) or (levels is None) != (info["default_levels"] is None):
        raise BabySSMError(f"--levels must be 2 or 3 for a model with levels, got {levels}")
    if levels is not None and levels not in info["trained_levels"]:
        print(f"babyssm: warning: {run_dir} has not trained level {levels}; exporting it untrained",
              file=sys.stderr)
    provenance = {"run_dir": str(run_dir), "levels": levels, "stages_completed": info["stages_completed"],
                  "chars_seen": info.get("chars_seen"), "words_seen": info.get("words_seen"),
                  "num_parameters": model.num_parameters(), "babyssm_version": babyssm.__version__,
                  "git_commit": info.get("run_info", {}).get("git_commit", "unknown")}
    remote = remote_code_files(model.hf_export)
    provenance["files"] = sorted([*EXPORT_FILES, *remote])  # what --force may replace later
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    stale = remove_stale_staging(out_dir.parent)
    if stale:
        print(f"babyssm: removed {len(stale)} temporary folder(s) left in {out_dir.parent} by an interrupted "
              f"export: {', '.join(p.name for p in stale[:3])}", file=sys.stderr)
    mask = umask()
    tmp, lock = _open_staging(out_dir, provenance["files"])
    try:
        weights = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
        safetensors.torch.save_file(weights, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        for name, source in remote.items():
            shutil.copyfile(source, tmp / name)
        files = {"config.json": hf_config(model, levels, provenance),
                 "generation_config.json": generation_config(),
                 "tokenizer_config.json": tokenizer_config(),
                 "special_tokens_map.json": special_tokens()}
        for name, obj in files.items():
            (tmp / name).write_text(json.dumps(obj, indent=2) + "\n")
        build_tokenizer(_min_symbol_run(info)).save(str(tmp / "tokenizer.json"))
        (tmp / "README.md").write_text(_readme(provenance))
        for f in tmp.iterdir():  # files as the user's umask makes them (safetensors writes 0600)
            f.chmod(0o666 & ~mask)
        tmp.chmod(0o777 & ~mask)  # mkdtemp makes it private; a model folder is meant to be shared
        if out_dir.exists():
            shutil.rmtree(out_dir)  # an earlier export (checked above): babyssm wrote every file in it
        tmp.rename(out_dir)
        (out_dir / STAGING_MARKER).unlink()
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        os.close(lock)
    return out_dir


def _open_staging(out_dir: Path, files: list[str]) -> tuple[Path, int]:
    """A new temporary folder beside ``out_dir`` with its marker written and locked: (folder, lock fd)."""
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.{STAGING_TAG}.", dir=out_dir.parent))
    fd = os.open(tmp / STAGING_MARKER, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
    fcntl.flock(fd, fcntl.LOCK_EX)
    os.write(fd, json.dumps({"pid": os.getpid(), "files": files}).encode())
    return tmp, fd


def remove_stale_staging(parent: Path) -> list[Path]:
    """Delete the temporary folders in ``parent`` that killed exports left; returns them."""
    removed = []
    for d in sorted(parent.iterdir()):
        if STAGING_NAME.match(d.name) and d.is_dir() and not d.is_symlink() and _remove_if_stale(d):
            removed.append(d)
    return removed


def _remove_if_stale(d: Path) -> bool:
    """Remove ``d`` if a dead export wrote everything in it (see the module docstring)."""
    try:
        entries = list(d.iterdir())
        if not entries:  # killed between mkdtemp and the marker: nothing to lose; a minute spares a live one
            if time.time() - d.stat().st_mtime > 60:
                d.rmdir()
                return True
            return False
        fd = os.open(d / STAGING_MARKER, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # held through the removal: one remover at a time
        allowed = {STAGING_MARKER, *json.loads((d / STAGING_MARKER).read_text())["files"]}
        if not all(e.name in allowed and e.is_file() and not e.is_symlink() for e in entries):
            return False
        shutil.rmtree(d)
        return True
    except (OSError, ValueError, TypeError, KeyError):  # BlockingIOError: a live export holds the lock
        return False
    finally:
        os.close(fd)


def check_out(run_dir: str | Path, out_dir: Path) -> None:
    """Refuse an ``--out`` that is a file, or is, contains or lies inside the run it exports."""
    run, out = Path(run_dir).resolve(), out_dir.resolve()
    relation = ("is" if out == run else "lies inside" if run in out.parents else
                "contains" if out in run.parents else None)
    if relation is not None:
        raise BabySSMError(f"--out {out_dir} {relation} the run folder {run_dir}: an export never writes over "
                           "its source; choose a folder outside the run")
    if out_dir.exists() and not out_dir.is_dir():
        raise BabySSMError(f"--out {out_dir} is a file; choose a folder for the exported model")


def not_exported(folder: Path) -> str | None:
    """The first entry of ``folder`` that ``babyssm export`` did not write (None: all of them did),
    judged by the export's own file names and config.json's ``babyssm_export`` record."""
    try:
        record = json.loads((folder / "config.json").read_text())["babyssm_export"]
    except (OSError, ValueError, TypeError, KeyError):
        return "no config.json written by babyssm export"
    # Exports made before the list was recorded: their files, and remote code (*.py) beside them.
    written = set(record.get("files") or [*EXPORT_FILES, *(p.name for p in folder.glob("*.py"))])
    written.add(STAGING_MARKER)  # left by an export killed between its rename and the marker's removal
    for entry in sorted(folder.iterdir()):
        if entry.name not in written or not entry.is_file():
            return f"{entry.name!r}, which babyssm export does not write"
    return None


def milestone_runs(run_dir: str | Path) -> list[tuple[str, Path]]:
    """(revision name, folder) of each word-milestone checkpoint of a run, by words seen:
    RUN_DIR/milestones/words_1M -> ("chck_1M", ...), the BabyLM naming of revisions."""
    root = Path(run_dir) / MILESTONE_DIR
    found = []
    for d in sorted(root.glob("words_*")) if root.is_dir() else []:
        words = read_config(d).get("milestone_words")
        found.append((words if isinstance(words, int) else 0, "chck_" + d.name.removeprefix("words_"), d))
    return [(name, d) for _, name, d in sorted(found)]
