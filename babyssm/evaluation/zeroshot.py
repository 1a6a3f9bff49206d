"""BabyLM's zero-shot tests as data: reading the sets, ranking candidates, averaging.

Symbols: s_j the summed log-probability (nats) of candidate j of an item (the right
candidate is j = 0), k the number of candidates tied for the best score.

Every set is a folder of ``*.jsonl`` files (``$BABYSSM_DATA/eval/<name>``); each line
becomes an ``Item``: candidate sentences (cleaned with ``babyssm.data.clean.clean_text``,
then encoded) and how far into them scoring starts. The rules follow the BabyLM 2025
pipeline for a causal LM, babylm/evaluation-pipeline-2025:
``evaluation_pipeline/sentence_zero_shot/read_files.py`` (how items are decoded),
``compute_results.py`` (ranking by summed log-probability of the completion) and
``run.py`` (averages):

- BLiMP (filtered, original) and the supplement: candidates good, bad; whole
  sentences from BOS. UID = the file's UID field (the file name for the supplement,
  whose field is "supplement"); "syntax_semantics" is written "syntax/semantics".
  Headline = the average over UIDs (macro over files).
- EWoK: candidates Context1 + " " + Target1 and Context1 + " " + Target2, scored on
  " " + Target_j given Context1 (Context2 is not read). Average over domains.
- Entity tracking: input_prefix + option_j, scored on the option's characters only;
  the prefix, its trailing space included, is context. Option 0 is right. UID
  "<file>_<numops>_ops"; average over UIDs per file, then over files.
- Wug adjective nominalization: the two tab-separated sentences, whole; softmax
  over (s_0, s_1) gives the model's preference for the first, correlated with the
  human ``ratio`` by Spearman's rho.

Ties: the pipeline takes ``torch.max``'s first index, so an exact tie with the right
candidate counts as right: ``accuracy_ties_right`` (the pipelines' figure) uses that
rule, exact equality only. Our own ``accuracy`` counts a k-way tie that includes
the right candidate as 1/k, and there score gaps under ``TIE_NATS`` are ties: the
batched and shared-prefix paths agree only to float32 rounding. Both are reported,
in percent. Scoring of a context starts at the candidates' shared prefix at the
latest; the shared prefix scores the same for every candidate, so where scoring
starts inside it never changes a ranking.

>>> credit(np.array([-10.0, -12.0])), credit(np.array([-10.0, -10.0])), credit(np.array([-11.0, -10.0]))
((1.0, True, False), (0.5, True, True), (0.0, False, False))
>>> credit(np.array([-10.00001, -10.0]))  # a tie for babyssm's credit, a loss for the pipeline
(0.5, False, True)
"""

from __future__ import annotations

import json
import math
import os
import warnings
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats

from babyssm.evaluation import scoring
from babyssm.data.clean import clean_text
from babyssm.errors import DATA_ENV, BabySSMError, data_root
from babyssm.data.vocab import encode

TIE_NATS = 1e-4  # for the 1/k credit: score gaps below float32 agreement of two exact paths are ties
BLIMP_SETS = ("blimp_filtered", "blimp", "supplement_filtered")
TASK_OF_SET = {**{s: "blimp" for s in BLIMP_SETS}, "ewok_filtered": "ewok",
               "entity_tracking": "entity_tracking", "wug_adj_nominalization": "wug"}
SUITES = {"babylm": ("blimp_filtered", "supplement_filtered", "ewok_filtered", "entity_tracking",
                     "wug_adj_nominalization")}
REQUIRED = {"blimp": ("sentence_good", "sentence_bad"), "ewok": ("Context1", "Target1", "Target2", "Domain"),
            "entity_tracking": ("input_prefix", "options", "numops"), "wug": ("sentences", "ratio")}
TEXT_FIELDS = {"blimp": ("sentence_good", "sentence_bad"), "ewok": ("Context1", "Target1", "Target2"),
               "entity_tracking": ("input_prefix",), "wug": ("sentences",)}


@dataclass
class Item:
    """One zero-shot item: candidates (symbol ids, the right one first), scored from ``start``."""

    file: str
    uid: str
    candidates: list[list[int]]
    start: int = 0  # chars of shared context read but not scored
    field: str = ""
    term: str = ""
    ratio: float = math.nan  # wug: human preference for the first candidate


def resolve_set(name_or_path: str, root: str | None = None) -> Path:
    """A set name (under DATA/eval) or a folder of jsonl files -> that folder."""
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return path
    if name_or_path not in TASK_OF_SET:
        raise BabySSMError(f"unknown set {name_or_path!r}: not a folder, nor one of {', '.join(TASK_OF_SET)}")
    if root is None and not os.environ.get(DATA_ENV):
        raise BabySSMError(f"to find set {name_or_path!r}, pass --data-root DIR (a folder holding eval/) "
                           f"or set {DATA_ENV}")
    path = data_root(root) / "eval" / name_or_path
    if not path.is_dir():
        raise BabySSMError(f"set folder {path} is missing; point --data-root (or BABYSSM_DATA) at the data")
    return path


def _encode(text: str, where: str) -> list[int]:
    if not isinstance(text, str):
        raise BabySSMError(f"{where}: a sentence must be a JSON string, got {json.dumps(text)[:40]}")
    try:
        return encode(clean_text(text))
    except ValueError as e:
        raise BabySSMError(f"{where}: {e}") from None


def _item(task: str, rec: dict[str, Any], file: Path, where: str) -> Item:
    stem = file.stem
    if task == "blimp":
        cands = [_encode(rec["sentence_good"], where), _encode(rec["sentence_bad"], where)]
        if "field" in rec:
            fld = "syntax/semantics" if rec["field"] == "syntax_semantics" else str(rec["field"])
            term = str(rec.get("linguistics_term", ""))
            return Item(stem, str(rec.get("UID", stem)), cands, 0, fld, term)
        return Item(stem, stem, cands, 0, "supplement", "supplement")
    if task == "ewok":
        context = clean_text(rec["Context1"])
        cands = [_encode(rec["Context1"] + " " + rec[t], where) for t in ("Target1", "Target2")]
        return Item(stem, str(rec["Domain"]), cands, len(context))
    if task == "entity_tracking":
        options = rec["options"]
        if not isinstance(options, list) or not options or not all(isinstance(o, str) for o in options):
            raise BabySSMError(f"{where}: field 'options' must be a non-empty list of strings")
        cands = [_encode(rec["input_prefix"] + o, where) for o in options]
        # Only the option's characters are scored: cleaning strips a lone prefix's trailing
        # space, so the context length is read off each candidate, not the prefix.
        context = min(len(c) - len(_encode(o, where)) for c, o in zip(cands, options))
        return Item(stem, f"{stem}_{rec['numops']}_ops", cands, context)
    pair = str(rec["sentences"]).split("\t")
    if len(pair) != 2:
        raise BabySSMError(f"{where}: field 'sentences' must hold two tab-separated sentences")
    if isinstance(rec["ratio"], bool) or not isinstance(rec["ratio"], (int, float)):
        raise BabySSMError(f"{where}: field 'ratio' must be a number, got {json.dumps(rec['ratio'])[:40]}")
    return Item(stem, stem, [_encode(s, where) for s in pair], 0, ratio=float(rec["ratio"]))


def load_items(set_dir: Path, task: str, limit_per_file: int | None = None) -> list[Item]:
    """Read every *.jsonl of a set folder (sorted); errors name the file and line."""
    files = sorted(set_dir.glob("*.jsonl"))
    if not files:
        raise BabySSMError(f"{set_dir} holds no .jsonl files: nothing to evaluate")
    items: list[Item] = []
    for file in files:
        taken = 0
        if not file.is_file():
            raise BabySSMError(f"{file} is a folder, not a .jsonl file; move it out of {set_dir}")
        with file.open("rb") as f:
            for lineno, raw in enumerate(f, start=1):
                if limit_per_file is not None and taken >= limit_per_file:
                    break
                where = f"{file}:{lineno}"
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as e:
                    raise BabySSMError(f"{where}: not UTF-8 (byte 0x{raw[e.start]:02x} at column {e.start + 1}); "
                                       "save the file as UTF-8 JSON lines") from None
                if lineno == 1 and line.startswith("\ufeff"):
                    line = line[1:]  # a UTF-8 byte-order mark
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError as e:
                    raise BabySSMError(f"{where}: not valid JSON ({e.msg} at column {e.colno})") from None
                if not isinstance(rec, dict):
                    raise BabySSMError(f"{where}: expected a JSON object, got {type(rec).__name__}")
                missing = [k for k in REQUIRED[task] if k not in rec]
                if missing:
                    needs = ", ".join(REQUIRED[task])
                    raise BabySSMError(f"{where}: missing field {missing[0]!r} (a {task} item needs {needs})")
                wrong = [k for k in TEXT_FIELDS[task] if not isinstance(rec[k], str)]
                if wrong:
                    raise BabySSMError(f"{where}: field {wrong[0]!r} must be a string, got "
                                       f"{json.dumps(rec[wrong[0]])[:40]}")
                items.append(_item(task, rec, file, where))
                taken += 1
    if not items:
        raise BabySSMError(f"{set_dir} holds no items (its .jsonl files are empty): nothing to evaluate")
    return items


def credit(scores: np.ndarray) -> tuple[float, bool, bool]:
    """(credit, right under the pipelines' rule, tie) for candidate scores, the right one first.

    A k-way tie (within ``TIE_NATS``) for the best score that includes the right
    candidate earns 1/k; the pipelines' rule counts the right one when no score is
    strictly above it (exact equality, as ``torch.max`` picks the first index).
    """
    best = scores.max()
    at_best = scores >= best - TIE_NATS
    right = bool(scores[0] >= best)
    if not at_best[0]:
        return 0.0, False, bool(at_best.sum() > 1)
    k = int(at_best.sum())
    return 1.0 / k, right, k > 1


def _pct(values: list[float]) -> float:
    return 100.0 * float(np.mean(values)) if values else math.nan


def score_items(scorer: Any, items: list[Item], batch_size: int, levels: int | None) -> list[np.ndarray]:
    groups = [it.candidates for it in items]
    starts = [[min(it.start, scoring.common_prefix(it.candidates))] * len(it.candidates) for it in items]
    return scoring.score_groups(scorer, groups, starts=starts, batch_size=batch_size, levels=levels)


def summarise(set_name: str, task: str, items: list[Item], scores: list[np.ndarray]) -> dict[str, Any]:
    """Accuracies per file, per UID, per phenomenon and overall (all in percent)."""
    if task == "wug":
        p_first = [float(1.0 / (1.0 + np.exp(s[1] - s[0]))) for s in scores]  # softmax over 2
        with warnings.catch_warnings():  # a constant column has no rank correlation: rho is nan, as reported
            warnings.simplefilter("ignore", stats.ConstantInputWarning)
            rho = float(stats.spearmanr(p_first, [it.ratio for it in items]).statistic)
        return {"set": set_name, "task": task, "n": len(items), "metric": "spearman_rho", "score": rho,
                "pipeline_score": rho, "items": [{"p_first": p, "ratio": it.ratio} for p, it in zip(p_first, items)]}
    rows: dict[str, dict[str, Any]] = {}
    by_uid: dict[str, list[tuple[float, bool]]] = defaultdict(list)
    for it, s in zip(items, scores):
        c, right, tie = credit(s)
        row = rows.setdefault(it.file, {"file": it.file, "field": it.field, "linguistics_term": it.term,
                                        "UID": it.uid, "n": 0, "credit": 0.0, "right_ties": 0, "ties": 0})
        row["n"] += 1
        row["credit"] += c
        row["right_ties"] += int(right)
        row["ties"] += int(tie)
        by_uid[it.uid].append((c, right))
    files = list(rows.values())
    for r in files:
        r["accuracy"] = 100.0 * r.pop("credit") / r["n"]
        r["accuracy_ties_right"] = 100.0 * r.pop("right_ties") / r["n"]
    uids = {u: {"n": len(v), "accuracy": _pct([c for c, _ in v]), "accuracy_ties_right": _pct([r for _, r in v])}
            for u, v in sorted(by_uid.items())}
    n = len(items)
    out: dict[str, Any] = {
        "set": set_name, "task": task, "n": n,
        "micro": sum(r["accuracy"] * r["n"] for r in files) / n,
        "micro_ties_right": sum(r["accuracy_ties_right"] * r["n"] for r in files) / n,
        "ties": sum(r["ties"] for r in files), "files": files, "uids": uids,
    }
    if task == "entity_tracking":  # per UID, then per file (split), then over files
        splits = [f["file"] for f in files]
        avg = {k: [np.mean([u[k] for name, u in uids.items() if name.startswith(sp + "_")]) for sp in splits]
               for k in ("accuracy", "accuracy_ties_right")}
        out["macro"] = float(np.mean(avg["accuracy"]))
        out["macro_ties_right"] = float(np.mean(avg["accuracy_ties_right"]))
    else:  # the pipeline's average over UIDs (= over files for BLiMP)
        out["macro"] = float(np.mean([u["accuracy"] for u in uids.values()]))
        out["macro_ties_right"] = float(np.mean([u["accuracy_ties_right"] for u in uids.values()]))
    out.update(metric="accuracy", score=out["macro"], pipeline_score=out["macro_ties_right"])
    if task == "blimp":
        terms: dict[str, list[dict]] = defaultdict(list)
        for r in files:
            terms[r["linguistics_term"]].append(r)
        out["phenomena"] = [{"linguistics_term": t, "files": len(rs), "n": sum(r["n"] for r in rs),
                             "micro": sum(r["accuracy"] * r["n"] for r in rs) / sum(r["n"] for r in rs),
                             "macro": float(np.mean([r["accuracy"] for r in rs]))} for t, rs in sorted(terms.items())]
    return out


def evaluate_set(scorer: Any, set_dir: Path, task: str, name: str | None = None, limit_per_file: int | None = None,
                 batch_size: int = scoring.DEFAULT_BATCH_SIZE, levels: int | None = None) -> dict[str, Any]:
    """Load, score and summarise one zero-shot set."""
    items = load_items(set_dir, task, limit_per_file)
    result = summarise(name or set_dir.name, task, items, score_items(scorer, items, batch_size, levels))
    result.update(levels=levels, limit_per_file=limit_per_file)
    return result


