"""Every figure babyssm draws: loss curves, BLiMP accuracy per file, level 1's codes.

One style: matplotlib's ``Figure`` (no pyplot: no GUI backend or global state, safe in
any process, with or without a display), 120 dpi, each figure written atomically
(``babyssm.io.atomic_write``) as a PNG at the path it is given.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from babyssm.data.vocab import BOS_ID, TEXT_IDS, symbol_name
from babyssm.io import atomic_write


def _save(fig: Any, path: str | Path) -> None:
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=120, format="png"))


def plot_stage_losses(metrics_path: Path, stage: int, out_path: Path) -> None:
    """PNG of a stage's train loss (and dev loss, dev bpc) against characters seen."""
    from matplotlib.figure import Figure

    rows = [json.loads(line) for line in metrics_path.read_text().splitlines() if line.strip()]
    rows = [r for r in rows if r.get("stage") == stage]
    fig = Figure(figsize=(7, 4))
    ax = fig.subplots()
    train_rows = [r for r in rows if "loss" in r]
    dev_rows = [r for r in rows if "dev_loss" in r]
    ax.plot([r["chars"] for r in train_rows], [r["loss"] for r in train_rows], lw=1, label="train loss")
    ax.plot([r["chars"] for r in dev_rows], [r["dev_loss"] for r in dev_rows], "o-", label="dev loss")
    ax.set_xlabel("characters seen")
    ax.set_ylabel("stage loss")
    if any("dev_bpc" in r for r in dev_rows):
        bpc = fig.gca().twinx()
        bpc.plot([r["chars"] for r in dev_rows if "dev_bpc" in r], [r["dev_bpc"] for r in dev_rows if "dev_bpc" in r],
                 "s--", color="tab:red", label="dev bpc")
        bpc.set_ylabel("dev bits per character")
        bpc.legend(loc="upper center")
    ax.legend(loc="upper right")
    ax.set_title(f"stage {stage}")
    fig.tight_layout()
    _save(fig, out_path)


def blimp_plot(res: dict[str, Any], path: Path, title: str) -> None:
    """PNG of a minimal-pair result's accuracy per file, coloured by field, chance dashed."""
    from matplotlib import colormaps
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    rows = sorted(res["files"], key=lambda r: r["accuracy"])
    fields = sorted({r["field"] for r in rows})
    colour = {f: colormaps["tab10"](i % 10) for i, f in enumerate(fields)}
    fig = Figure(figsize=(8, 1.5 + 0.17 * len(rows)))
    ax = fig.subplots()
    ax.barh(range(len(rows)), [r["accuracy"] for r in rows], color=[colour[r["field"]] for r in rows])
    ax.set_yticks(range(len(rows)), [r["file"] for r in rows], fontsize=6)
    ax.axvline(50, color="grey", linestyle="--", linewidth=0.8)
    ax.set_xlim(0, 100)
    ax.set_xlabel("accuracy (%), ties count 1/2; dashed: chance")
    ax.set_title(f"{title}: micro {res['micro']:.1f}, macro {res['macro']:.1f}", fontsize=9)
    ax.legend(handles=[Rectangle((0, 0), 1, 1, color=colour[f]) for f in fields], labels=fields, fontsize=7,
              loc="lower right")
    fig.tight_layout()
    _save(fig, path)


@torch.no_grad()
def plot_embedding_pca(model: nn.Module, path: str | Path) -> Path:
    """Save a labelled 2-D PCA scatter of level 1's codes (the symbols text can contain) as a PNG."""
    from matplotlib.figure import Figure

    codes = model.level1.codes().float().cpu()  # (V, D), already centred
    ids = sorted(TEXT_IDS | {BOS_ID})
    _, s, vh = torch.linalg.svd(codes, full_matrices=False)
    xy = (codes[ids] @ vh[:2].T).numpy()  # (S, 2)
    explained = (s[:2] ** 2 / (s**2).sum()).tolist()
    groups = {"lowercase": "tab:blue", "uppercase": "tab:orange", "digit": "tab:green", "other": "tab:gray"}

    def group(i: int) -> str:
        ch = chr(i)
        return "lowercase" if ch.islower() else "uppercase" if ch.isupper() else "digit" if ch.isdigit() else "other"

    fig = Figure(figsize=(9, 8))
    ax = fig.subplots()
    for name, colour in groups.items():
        members = [k for k, i in enumerate(ids) if group(i) == name]
        ax.scatter(xy[members, 0], xy[members, 1], s=12, color=colour, label=name)
        for k in members:
            ax.annotate(symbol_name(ids[k]), xy[k], fontsize=7, color=colour, xytext=(2, 2),
                        textcoords="offset points")
    ax.set_xlabel(f"PC1 ({explained[0]:.1%} of variance)")
    ax.set_ylabel(f"PC2 ({explained[1]:.1%} of variance)")
    ax.set_title("Level-1 character codes: 2-D PCA")
    ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    _save(fig, path)
    return Path(path)
