"""Prepared corpora: ``babyssm prepare`` turns a BabyLM release into ``.bin`` symbol files.

A release is a folder (searched recursively) or a list of UTF-8 text files. A
file's split comes from its suffix: ``.train`` -> train, ``.dev`` -> dev, ``.test``
-> test. A ``.txt`` file (the 2023 Hugging Face layout: ``10M/``, ``dev/``,
``test/``) takes its split from the nearest folder between it and the ``--data``
folder (for a file named on the command line: its parent folder) whose name,
split at ``_ - .`` and spaces, holds ``dev``/``valid``/``validation`` -> dev,
``test`` -> test or ``train`` -> train; with none, it is train. Hidden files and
other suffixes (README.md, .zip) are skipped.

Each file is read in fixed-size binary chunks through an incremental UTF-8
decoder and cleaned with ``babyssm.data.clean.StreamCleaner`` (same bytes as cleaning
the whole file; memory bounded by the chunk size, whatever the line lengths).
Files go in sorted order (split, then path) into ``PREPARED/<split>.bin``: raw
uint8 symbol ids, which are the cleaned ASCII bytes, each file followed by a
newline unless it already ends with one. ``meta.json`` records the vocabulary,
the resolved config, the package version, per split totals, the symbol counts
and sha256 of each .bin, and per source file its ``offset`` and ``length`` in the
split's .bin (the newline separator lies just after, outside ``length``), input
bytes, characters (before and after cleaning), words (whitespace-split, after
cleaning), what cleaning changed and the input's sha256. There are no timestamps
or absolute paths in it, so the same input gives the same bytes, meta.json too.
Every file is written to a temporary name and renamed into place, meta.json
last (and, with ``--force``, the old meta.json is removed first), so a folder
whose meta.json is present was prepared completely. ``prepare`` writes only into a
new or empty folder or one that it made (``.babyssm-prepared`` or its meta.json),
and there touches only the files it writes: a user's folder is never overwritten.

Symbols: T corpus length in characters.

Worked example (shell)::

    babyssm prepare --data /work/shared/data/babylm --out prepared/babylm
    babyssm stats prepared/babylm --top 10

and in Python (the text of one source file, back from the .bin)::

    meta = prepare(["corpus/"], "prepared/x")
    ids = load_split("prepared/x", "train")  # (T,) uint8 memmap
    src = meta["sources"][0]
    text = bytes(ids[src["offset"] : src["offset"] + src["length"]]).decode("ascii")
"""

from __future__ import annotations

import codecs
import dataclasses
import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from babyssm import __version__
from babyssm.data.clean import CleanConfig, StreamCleaner
from babyssm.data.vocab import SYMBOLS, TEXT_IDS, VOCAB_SIZE, symbol_name
from babyssm.errors import DATA_ENV, BabySSMError
from babyssm.io import atomic_write, atomic_write_text, sha256_file

FORMAT = "babyssm-prepared-v1"
SPLITS = ("train", "dev", "test")
SUFFIX_SPLITS = {".train": "train", ".dev": "dev", ".test": "test"}
TEXT_SUFFIXES = (*SUFFIX_SPLITS, ".txt")
_FOLDER_SPLITS = {"train": "train", "dev": "dev", "valid": "dev", "validation": "dev", "test": "test"}
CHUNK_BYTES = 1 << 20  # read size; any value gives the same output
META = "meta.json"
MARKER = ".babyssm-prepared"  # written first: a folder that prepare made, even if interrupted


@dataclass(frozen=True)
class Source:
    path: Path  # the file to read
    name: str  # its path relative to the --data folder (a named file: its file name)
    split: str


def _txt_split(folders: list[str]) -> str:
    """Split of a ``.txt`` file from its folder names, nearest first."""
    for folder in folders:
        for token in re.split(r"[_\-. ]+", folder.lower()):
            if token in _FOLDER_SPLITS:
                return _FOLDER_SPLITS[token]
    return "train"


def _source(path: Path, name: str, folders: list[str]) -> Source:
    split = SUFFIX_SPLITS.get(path.suffix) or _txt_split(folders)
    return Source(path, name, split)


def find_sources(inputs: list[str | Path]) -> list[Source]:
    """The text files of ``inputs`` (folders and files), with splits, in prepare order."""
    if not inputs:
        raise BabySSMError(f"no input given: pass --data DIR_OR_FILES or set {DATA_ENV}")
    sources: dict[str, Source] = {}
    for item in inputs:
        root = Path(item).expanduser()
        if root.is_dir():
            found = _scan_folder(root)
        elif root.is_file():
            if root.suffix not in TEXT_SUFFIXES:
                raise BabySSMError(
                    f"{root}: not a text file babyssm reads (want {', '.join(TEXT_SUFFIXES)})"
                )
            found = [_source(root, root.name, [root.parent.name])]
        else:
            raise BabySSMError(f"{root}: no such file or folder")
        for src in found:
            if src.name in sources:
                raise BabySSMError(
                    f"{src.path} and {sources[src.name].path} would both be recorded as "
                    f"{src.name!r}; pass only one of them"
                )
            sources[src.name] = src
    return sorted(sources.values(), key=lambda s: (SPLITS.index(s.split), s.name))


def _scan_folder(root: Path) -> list[Source]:
    files = [
        p for p in sorted(root.rglob("*"))
        if p.is_file() and not any(part.startswith(".") or part == "__MACOSX"
                                   for part in p.relative_to(root).parts)
    ]
    if not files:
        raise BabySSMError(f"folder {root} holds no files; point --data at a BabyLM release")
    texts = [p for p in files if p.suffix in TEXT_SUFFIXES]
    if not texts:
        raise BabySSMError(
            f"folder {root} holds no {'/'.join(TEXT_SUFFIXES)} files "
            f"(found e.g. {files[0].relative_to(root)}); point --data at a BabyLM release"
        )
    out = []
    for p in texts:
        rel = p.relative_to(root)
        out.append(_source(p, rel.as_posix(), list(reversed(rel.parts[:-1]))))
    return out


class _Writer:
    """Appends cleaned text to an open .bin, counting characters, words and symbols."""

    def __init__(self, f):
        self.f = f
        self.chars = 0
        self.words = 0
        self.counts = np.zeros(VOCAB_SIZE, dtype=np.int64)
        self.last = "\n"  # the last character written; a fresh file starts a line

    def write(self, text: str) -> None:
        if not text:
            return
        data = text.encode("ascii")
        ids = np.frombuffer(data, dtype=np.uint8)
        self.counts += np.bincount(ids, minlength=VOCAB_SIZE)
        self.f.write(data)
        self.chars += len(data)
        # A word split across two pieces is counted once.
        self.words += len(text.split()) - (not self.last.isspace() and not text[0].isspace())
        self.last = text[-1]


def _clean_file(src: Source, out: _Writer, config: CleanConfig, encoding_errors: str,
                chunk_bytes: int) -> dict:
    """Stream ``src`` through the cleaner into ``out``; returns its meta.json record."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors=encoding_errors)
    cleaner = StreamCleaner(config)
    sha = hashlib.sha256()
    offset, words0 = out.chars, out.words
    raw_bytes = raw_chars = lines = 0
    try:
        f = open(src.path, "rb")
    except OSError as e:
        raise BabySSMError(f"{src.path}: cannot read ({e.strerror})") from None
    with f:
        while True:
            chunk = f.read(chunk_bytes)
            final = not chunk
            sha.update(chunk)
            nul = chunk.find(b"\x00")
            if nul >= 0:
                raise BabySSMError(
                    f"{src.path}: NUL byte at byte {raw_bytes + nul}: a binary file, not UTF-8 "
                    "text; remove it from --data"
                )
            pending = decoder.getstate()[0]
            try:
                text = decoder.decode(chunk, final=final)
            except UnicodeDecodeError as e:
                seen = pending + chunk
                line = lines + seen[: e.start].count(b"\n") + 1
                raise BabySSMError(
                    f"{src.path}: invalid UTF-8 at byte {raw_bytes - len(pending) + e.start} "
                    f"(line {line}): {e.reason}; fix the file or pass --encoding-errors replace"
                ) from None
            raw_bytes += len(chunk)
            raw_chars += len(text)
            lines += chunk.count(b"\n")
            out.write(cleaner.feed(text))
            if final:
                break
    out.write(cleaner.finish())
    length = out.chars - offset
    words = out.words - words0
    if out.last != "\n" or length == 0:
        out.write("\n")
    return {
        "path": src.name,
        "split": src.split,
        "offset": offset,
        "length": length,
        "raw_bytes": raw_bytes,
        "raw_chars": raw_chars,
        "chars": length,
        "words": words,
        "cleaning": cleaner.stats.as_dict(),
        "sha256": sha.hexdigest(),
    }


def prepare(inputs: list[str | Path], out_dir: str | Path, config: CleanConfig = CleanConfig(),
            *, force: bool = False, encoding_errors: str = "strict",
            chunk_bytes: int = CHUNK_BYTES, log=None) -> dict:
    """Clean ``inputs`` into ``out_dir/<split>.bin`` + ``meta.json``; returns the meta dict."""
    if encoding_errors not in ("strict", "replace"):
        raise BabySSMError(f"encoding_errors must be 'strict' or 'replace', not {encoding_errors!r}")
    sources = find_sources(inputs)
    out_dir = Path(out_dir).expanduser()
    meta_path = out_dir / META
    _check_out(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        if meta_path.exists():
            if not force:
                raise BabySSMError(
                    f"{out_dir} already holds a prepared corpus ({META}); pass --force to overwrite"
                )
        (out_dir / MARKER).write_text("written by babyssm prepare: this folder is a prepared corpus\n")
        if meta_path.exists():
            meta_path.unlink()  # from here on the folder reads as unprepared until done
        split_meta, records = {}, []
        for split in SPLITS:
            group = [s for s in sources if s.split == split]
            bin_path = out_dir / f"{split}.bin"
            if not group:
                bin_path.unlink(missing_ok=True)
                continue
            writers = []

            def write_split(tmp: Path) -> None:
                with open(tmp, "wb") as f:
                    writers.append(_Writer(f))
                    for src in group:
                        if log:
                            log(f"  {split:5s} {src.name}")
                        records.append(_clean_file(src, writers[0], config, encoding_errors, chunk_bytes))

            atomic_write(bin_path, write_split)  # a failed split leaves no half-written file behind
            w = writers[0]
            split_meta[split] = {
                "file": bin_path.name,
                "bytes": w.chars,
                "chars": sum(r["chars"] for r in records if r["split"] == split),
                "words": sum(r["words"] for r in records if r["split"] == split),
                "sources": len(group),
                "symbol_counts": w.counts.tolist(),
                "sha256": sha256_file(bin_path),
            }
        meta = {
            "format": FORMAT,
            "babyssm_version": __version__,
            "config": {**dataclasses.asdict(config), "encoding_errors": encoding_errors},
            "vocab": {"size": VOCAB_SIZE, "symbols": SYMBOLS, "text_ids": sorted(TEXT_IDS)},
            "splits": split_meta,
            "sources": records,
        }
        atomic_write_text(meta_path, json.dumps(meta, indent=1, sort_keys=True) + "\n")
    except OSError as e:
        where = e.filename or out_dir
        raise BabySSMError(f"cannot write prepared corpus to {where}: {e.strerror or e}") from None
    return meta


def _check_out(out_dir: Path) -> None:
    """Refuse a folder that ``prepare`` did not make: it writes only into a new or empty folder,
    or one holding its marker or meta.json (where it replaces only the files it wrote)."""
    if out_dir.exists() and not out_dir.is_dir():
        raise BabySSMError(f"--out {out_dir} is a file; choose a folder for the prepared corpus")
    if not out_dir.is_dir() or (out_dir / MARKER).is_file():
        return
    try:
        ours = json.loads((out_dir / META).read_text(encoding="utf-8")).get("format") == FORMAT
    except (OSError, ValueError, AttributeError):
        ours = False
    others = sorted(p.name for p in out_dir.iterdir())
    if others and not ours:
        raise BabySSMError(f"--out {out_dir} holds files that babyssm prepare did not write ({others[0]!r}"
                           f"{' and more' if len(others) > 1 else ''}); prepare writes only into a new or empty "
                           "folder or one it made: choose another --out")


def _prepare_hint(prepared_dir: Path) -> str:
    return f"run `babyssm prepare --data DIR --out {prepared_dir}` first"


def load_meta(prepared_dir: str | Path) -> dict:
    """The meta.json of a prepared folder; BabySSMError if it is missing or not ours."""
    d = Path(prepared_dir).expanduser()
    if not d.is_dir():
        raise BabySSMError(f"prepared folder {d} does not exist; {_prepare_hint(d)}")
    path = d / META
    if not path.is_file():
        raise BabySSMError(
            f"{d} holds no {META} (not prepared, or prepare was interrupted); {_prepare_hint(d)}"
        )
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise BabySSMError(f"{path} is not valid JSON ({e}); {_prepare_hint(d)}") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise BabySSMError(f"{path} is not a babyssm {FORMAT} file; {_prepare_hint(d)}")
    return meta


def load_split(prepared_dir: str | Path, split: str) -> np.memmap:
    """The (T,) uint8 symbol ids of ``split``, memory-mapped read-only."""
    d = Path(prepared_dir).expanduser()
    meta = load_meta(d)
    info = meta["splits"].get(split)
    if info is None:
        have = ", ".join(meta["splits"]) or "none"
        raise BabySSMError(
            f"{d} has no {split!r} split (it has: {have}); give prepare {split} files "
            f"(*.{split}) and {_prepare_hint(d)}"
        )
    path = d / info["file"]
    if not path.is_file() or path.stat().st_size != info["bytes"]:
        raise BabySSMError(f"{path} is missing or does not match {META}; {_prepare_hint(d)}")
    return np.memmap(path, dtype=np.uint8, mode="r")


def format_stats(meta: dict, top: int = 20) -> str:
    """A plain-text corpus summary: sources, split totals, commonest symbols."""
    cfg = meta["config"]
    lines = [
        f"babyssm {meta['babyssm_version']} prepared corpus; cleaning: "
        + ", ".join(f"{k}={v}" for k, v in sorted(cfg.items())),
        "",
        f"{'source':44s} {'split':5s} {'chars':>11s} {'words':>10s} {'folded':>7s} "
        f"{'dropped':>7s} {'runs':>5s} {'spaces':>7s} {'tags':>6s}",
    ]
    for r in meta["sources"]:
        c = r["cleaning"]
        lines.append(
            f"{r['path'][:44]:44s} {r['split']:5s} {r['chars']:11,d} {r['words']:10,d} "
            f"{c['folded']:7,d} {c['dropped']:7,d} {c['symbol_runs']:5,d} {c['spaces']:7,d} "
            f"{c['speaker_tags']:6,d}"
        )
    lines.append("")
    splits = [(name, meta["splits"][name]) for name in SPLITS if name in meta["splits"]]
    for split, s in splits:
        lines.append(
            f"{split:5s}: {s['chars']:,d} chars, {s['words']:,d} words, {s['sources']} sources, "
            f"{s['bytes']:,d} bytes in {s['file']}"
        )
    for split, s in splits:
        counts = np.asarray(s["symbol_counts"], dtype=np.int64)
        total = max(int(counts.sum()), 1)
        order = np.argsort(-counts, kind="stable")[:top]
        lines.append("")
        lines.append(f"top {len(order)} symbols in {split}:")
        for i in order:
            if counts[i] == 0:
                break
            lines.append(f"  {symbol_name(int(i)):>5s} {int(counts[i]):12,d} {counts[i] / total:7.2%}")
    return "\n".join(lines)
