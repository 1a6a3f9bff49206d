"""How well level 1's character codes denoise: ``level1_report``, written after stage 1.

Symbols: B batch, T time, V vocabulary (128), D d_model, S the symbols text can contain.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from babyssm.data.vocab import BOS_ID, TEXT_IDS
from babyssm.models.levels import CharacterEncoder


@torch.no_grad()
def level1_report(model: nn.Module, idx: torch.Tensor, sigmas: tuple[float, ...] = (0.05, 0.1, 0.2, 0.5, 1.0, 2.0),
                  seed: int = 0) -> dict:
    """How well level 1's codes denoise on symbols ``idx`` ((T,) or (B, T)), as a JSON-able dict.

    Keys: ``mse`` (the training objective, noise levels sampled as in training),
    ``clean_nn_accuracy`` (a clean code's nearest code is its own), ``per_sigma``
    (for each noise level: ``nn_accuracy`` of the nearest code to the noisy vector,
    ``posterior_accuracy`` of the denoiser's argmax with the context prior, ``mse``),
    ``mean_pairwise_sq_distance`` and ``min_distance``
    between the codes of the symbols text can contain.
    """
    encoder: CharacterEncoder = model.level1
    device = encoder.weight.device
    idx = idx.to(device=device, dtype=torch.long)
    if idx.dim() == 1:
        idx = idx[None]  # (1, T)
    g = torch.Generator(device=device).manual_seed(seed)
    codes = encoder.codes().float()  # (V, D)
    mse, _ = encoder.diffusion_loss(idx, generator=g)
    clean = codes[idx]  # (B, T, D)

    def nearest(x: torch.Tensor) -> torch.Tensor:
        return (x @ codes.T - 0.5 * (codes**2).sum(-1)).argmax(-1)  # argmin of ||x - E_c||

    per_sigma = []
    for sigma in sigmas:
        noisy = clean + sigma * torch.randn(clean.shape, device=device, generator=g)
        logits, x0_hat = encoder.denoise(noisy, torch.tensor(sigma, device=device), idx, codes)
        per_sigma.append({
            "sigma": sigma,
            "nn_accuracy": (nearest(noisy) == idx).float().mean().item(),
            "posterior_accuracy": (logits.argmax(-1) == idx).float().mean().item(),
            "mse": (x0_hat - clean).pow(2).sum(-1).mean().item(),
        })
    text = torch.tensor(sorted(TEXT_IDS | {BOS_ID}), device=device)
    distances = torch.cdist(codes[text], codes[text])  # (S, S)
    V = codes.shape[0]
    return {
        "mse": mse.item(),
        "clean_nn_accuracy": (nearest(clean) == idx).float().mean().item(),
        "per_sigma": per_sigma,
        "mean_pairwise_sq_distance": (torch.cdist(codes, codes) ** 2).sum().item() / (V * (V - 1)),
        "min_distance": distances.masked_fill(torch.eye(len(text), dtype=torch.bool, device=device), math.inf)
        .min().item(),
    }
