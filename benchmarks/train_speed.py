"""Training speed of the hierarchical SSM's stages against same-size GRU and transformer LMs.

Symbols: B batch, T time, V vocabulary, D width, N d_state, R rank, L chunk size,
F transformer MLP width, K layers.

Measures, in one run and at the same B x T, the training characters per second
(forward + backward + AdamW step, median over timed steps after warm-up; with ``--rounds R``
the models take R turns, so that a machine whose speed drifts affects them alike) of

- stage 2 (level 2 trained on frozen level 1), stage 3 (level 3 on frozen
  levels 1-2) and stage 4 (all levels together) of a hierarchical preset
  (default: seed; ``--preset deep`` for the default model's level 3);
- ``GRULM`` (``babyssm.models.gru``), ``TransformerLM`` (``babyssm.models.transformer``)
  and ``TransformerPP`` (``babyssm.models.transformerpp``: RoPE, RMSNorm, SwiGLU) sized
  to the preset's full parameter count;
- the ``hlru`` family (``--family-preset``, default hlru and hlru-flat): its scan kernels on this
  device ("sequential": a loop with a hand-written backward; "chunked": blocks of
  ``chunk_size`` steps, the GPU path), each the whole model trained by cross-entropy
  on text-like windows (letters with a space or newline ~1 in 5, so that its word
  level runs on about T/5 words, as on BabyLM text);
- with ``--compile``, the GRU, transformer++ and the hlru presets again, each step under
  torch.compile as ``babyssm train --compile`` takes it (the scan stays outside the graph);
- the scan kernels (``babyssm.models.scan``) against the plain autograd loop (fwd + bwd),
  with a constant (N,) and a time-varying (B, T, N) decay;

and the achieved GFLOP/s of each, against a large matmul timed in the same run, in the
step's precision (the machine's practical peak; ``--precision bfloat16``: every step under
bfloat16 autocast, as ``babyssm train --precision bfloat16``); with ``--breakdown``,
where each model's step time goes (matrix products, the scan, the rest), from the torch
profiler. FLOPs are counted analytically: 2 per multiply-add of every matmul-like
product (elementwise work is not counted); backward costs twice the forward of a
trained product, and frozen levels (stage 3's level 2) run forward only:

  level 2 forward per char:   2 N R + R D (output) + D V (soft-NN logits) + L N (scan)
           per batch:         2 V D R + V R N (the V-row input tables)
  level 3 forward per char:   I N (1 + S) + 2 N D + D V + L N    (I: its input width, N with
                              level 2's state, R with its features; S = 1 for selective decay)
  GRU forward per char:       6 D D (input + recurrent gates) + D V
  transformer per char:       K (4 D D + 2 D F + T D) + D V   (causal attention: T D on average)
  transformer++ per char:     K (4 D D + 3 D F + T D) + D V
  hlru per char:              the character blocks' matrices + the word blocks' / 5 + D V
                              (+ T D per character-level attention mixer)

    nice -n 10 python benchmarks/train_speed.py                  # seed, 32 x 256
    python benchmarks/train_speed.py --batch-size 8 --seq-len 128 --steps 5
    python benchmarks/train_speed.py --device cuda --steps 20
    OMP_NUM_THREADS=1 python benchmarks/train_speed.py --threads 1 --scan-kernels sequential   # RESULTS' figures
    OMP_NUM_THREADS=1 python benchmarks/train_speed.py --threads 1 --scan-kernels sequential --compile
    OMP_NUM_THREADS=1 python benchmarks/train_speed.py --threads 1 --scan-kernels sequential --compile --breakdown
    OMP_NUM_THREADS=1 python benchmarks/train_speed.py --threads 1 --scan-kernels sequential --compile --precision bfloat16
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time

import torch

from babyssm.data.vocab import BOS_ID, NEWLINE_ID, SPACE_ID
from babyssm.models.gru import GRULM, gru_config_for_params
from babyssm.models.hierarchical import HierarchicalSSM
from babyssm.models.hlru import HLRU, get_hlru_preset
from babyssm.models.presets import get_preset
from babyssm.models.scan import linear_scan, reference_scan
from babyssm.models.transformer import TransformerLM, transformer_config_for_params
from babyssm.models.transformerpp import TransformerPP, transformerpp_config_for_params
from babyssm.training.plan import PRECISIONS, resolve_precision


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def step_seconds(fn, steps: int, device: str) -> list[float]:
    times = []
    for _ in range(steps):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return times


def median_seconds(fn, steps: int, warmup: int, device: str) -> float:
    for _ in range(warmup):
        fn()
    return statistics.median(step_seconds(fn, steps, device))


def matmul_peak_gflops(device: str, size: int, steps: int, dtype: torch.dtype = torch.float32) -> float:
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    seconds = median_seconds(lambda: a @ b, steps, 2, device)
    return 2 * size**3 / seconds / 1e9


def train_step_fn(model, stage: int, B: int, T: int, device: str, compile: bool = False, precision: str = "auto"):
    """One optimizer step, as the training loop takes it (``compile``: as under ``--compile``;
    ``precision``: as under ``--precision``)."""
    opt = torch.optim.AdamW(model.stage_parameters(stage), lr=1e-4)
    x, y = text_like_batch(B, T, device)
    stage_loss = torch.compile(model.stage_loss) if compile else model.stage_loss
    bf16 = resolve_precision(precision, device) == "bfloat16"

    def step():
        model.stage_parameters(stage)  # rows of one model take turns (--rounds): set this stage's trainable set again
        with torch.autocast(device.split(":")[0], dtype=torch.bfloat16, enabled=bf16):
            loss, _ = stage_loss(stage, x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


MATRIX_OPS = ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::_scaled_dot_product_flash_attention_for_cpu",
              "aten::_scaled_dot_product_flash_attention_for_cpu_backward")
SCAN_OPS = ("_LinearScan", "_LinearScanBackward")  # the autograd Function's forward and backward, children included


def step_breakdown(step, steps: int) -> dict[str, float]:
    """Shares of a step's CPU time (profiled, ``steps`` steps): matrix products (matmuls and
    attention), the hlru scan (its loop, forward and backward) and everything else (elementwise
    work, fused or not, copies, the optimizer, dispatch)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            step()
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    matrix = sum(e.self_cpu_time_total for e in events if e.key in MATRIX_OPS)
    scan = sum(e.cpu_time_total for e in events if e.key in SCAN_OPS)
    return {"matrix products": matrix / total, "scan": scan / total, "rest": 1 - (matrix + scan) / total}


def text_like_batch(B: int, T: int, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    """x, y (B, T): random lower-case letters, a space or newline at ~1 in 5 positions, BOS first."""
    g = torch.Generator(device="cpu").manual_seed(0)
    text = torch.randint(97, 123, (B, T + 1), generator=g)  # (B, T+1)
    text[torch.rand(B, T + 1, generator=g) < 0.18] = SPACE_ID
    text[torch.rand(B, T + 1, generator=g) < 0.02] = NEWLINE_ID
    x = torch.cat([torch.full((B, 1), BOS_ID), text[:, 1:T]], dim=1)  # (B, T)
    return x.to(device), text[:, 1:].to(device)


def hlru_forward_flops(model: HLRU, B: int, T: int, words_per_char: float = 0.2) -> float:
    """2 per multiply-add of every matrix: the character blocks every character, the word
    blocks once per word (``words_per_char``), the head every character; an attention
    mixer adds its scores and weighted sum, W D per position over a causal window of W."""
    c = model.config

    def macs(module) -> int:
        return sum(p.numel() for n, p in module.named_parameters() if p.dim() == 2 and "conv" not in n)

    char = sum(macs(b) for b in (*model.encoder, *model.decoder)) + c.d_model * c.vocab_size
    char += c.char_attention * min(T, c.char_window) * c.d_model
    word = 0.0
    if c.n_word:
        word = sum(macs(b) for b in model.word) + 2 * c.d_model * c.d_word
        word += c.word_attention * min(T * words_per_char, c.word_window) * c.d_word
    return 2 * B * T * (char + words_per_char * word)


def level2_forward_flops(cfg, B: int, T: int) -> float:
    V, D, N, R, L = cfg.vocab_size, cfg.d_model, cfg.d_state, cfg.rank, cfg.chunk_size
    per_char = 2 * N * R + R * D + D * V + L * N
    return 2 * (B * T * per_char + 2 * V * D * R + V * R * N)


def level3_forward_flops(cfg, B: int, T: int) -> float:
    V, D, N, L = cfg.vocab_size, cfg.d_model, cfg.d_state, cfg.chunk_size
    width = cfg.rank if cfg.level3_input == "features" else N
    selective = 1 if cfg.level3_decay == "selective" else 0
    return 2 * B * T * (width * N * (1 + selective) + 2 * N * D + D * V + L * N)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="seed", help="hierarchical model preset (default: seed)")
    p.add_argument("--batch-size", type=int, default=32, help="B (default: 32)")
    p.add_argument("--seq-len", type=int, default=256, help="T (default: 256)")
    p.add_argument("--steps", type=int, default=8, help="timed steps per model (default: 8)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first (default: 2)")
    p.add_argument("--rounds", type=int, default=1,
                   help="the models take turns this many times, --steps timed steps each turn; the median "
                        "of all of a model's steps is its speed (default: 1)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    p.add_argument("--threads", type=int, default=torch.get_num_threads(), help="CPU threads")
    p.add_argument("--peak-size", type=int, default=2048, help="side of the square matmul for the peak")
    p.add_argument("--family-preset", nargs="+", default=["hlru", "hlru-flat"],
                   help="hlru family presets (default: hlru hlru-flat)")
    p.add_argument("--scan-kernels", nargs="+", default=["sequential", "chunked"], choices=("sequential", "chunked"),
                   help="the hlru presets' scan kernels to time (default: both)")
    p.add_argument("--breakdown", action="store_true",
                   help="also profile each model's step: the share of its time in matrix products, the scan and the rest")
    p.add_argument("--compile", action="store_true",
                   help="also time the GRU, transformer++ and the hlru presets (first scan kernel) as "
                        "`babyssm train --compile` trains them: torch.compile, which takes a minute per model first")
    p.add_argument("--precision", default="auto", choices=PRECISIONS,
                   help="the training step's matrix products, as `babyssm train --precision` (default auto: "
                        "bfloat16 on CUDA, float32 on CPU)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    B, T, dev = args.batch_size, args.seq_len, args.device
    chars = B * T

    cfg = get_preset(args.preset)
    ssm = HierarchicalSSM(cfg).to(dev)
    n_params = ssm.num_parameters()
    gru = GRULM(gru_config_for_params(n_params)).to(dev)
    tcfg = transformer_config_for_params(n_params, seq_len=T)
    transformer = TransformerLM(tcfg).to(dev)
    pcfg = transformerpp_config_for_params(n_params, seq_len=T)
    transformerpp = TransformerPP(pcfg).to(dev)
    hlru = {f"{name}, {k} scan": HLRU(dataclasses.replace(get_hlru_preset(name), scan_kernel=k)).to(dev)
            for name in args.family_preset for k in args.scan_kernels}
    V = cfg.vocab_size

    precision = resolve_precision(args.precision, dev)
    peak = matmul_peak_gflops(dev, args.peak_size, max(3, args.steps), getattr(torch, precision))
    print(f"torch {torch.__version__}, device {dev}, {args.threads} threads, B x T = {B} x {T}, "
          f"{precision} matrix products")
    print(f"{precision} matmul peak ({args.peak_size}^3): {peak:,.1f} GFLOP/s\n")

    l2 = level2_forward_flops(cfg, B, T)
    l3 = level3_forward_flops(cfg, B, T)
    gd = gru.config.d_model
    td, tf, tk = tcfg.d_model, tcfg.d_ff, tcfg.n_layers
    rows = [
        ("stage 2 (level 2)", 2, ssm, 3 * l2, ssm.level2),
        ("stage 3 (level 3)", 3, ssm, l2 + 3 * l3, ssm.level3),
        ("stage 4 (all levels)", 4, ssm, 3 * (l2 + l3), ssm),
        (f"GRU (D={gd})", 0, gru, 3 * 2 * chars * (6 * gd * gd + gd * V), gru),
        (f"transformer ({tk}x{td}, F={tf})", 0, transformer,
         3 * 2 * chars * (tk * (4 * td * td + 2 * td * tf + T * td) + td * V), transformer),
        (f"transformer++ ({pcfg.n_layers}x{pcfg.d_model}, F={pcfg.d_ff})", 0, transformerpp,
         3 * 2 * chars * (pcfg.n_layers * (4 * pcfg.d_model**2 + 3 * pcfg.d_model * pcfg.d_ff + T * pcfg.d_model)
                          + pcfg.d_model * V), transformerpp),
        *[(name, 0, m, 3 * hlru_forward_flops(m, B, T), m) for name, m in hlru.items()],
    ]
    gru_name, tpp_name = rows[3][0], rows[5][0]
    # Compiled again: the GRU first (the other ratio's reference), transformer++, each hlru preset's first kernel.
    timed = [gru_name, tpp_name, *(n for n in hlru if n.endswith(f"{args.scan_kernels[0]} scan"))] if args.compile else []
    rows += [(f"{name}, compiled", *rest) for name, *rest in rows if name in timed]
    print(f"{'model':<30} {'trained params':>15} {'chars/s':>12} {'GFLOP/s':>9} {'% peak':>7}")
    steps = {}
    for name, stage, model, *_ in rows:
        compiled = name.endswith(", compiled")
        steps[name] = train_step_fn(model, stage, B, T, dev, compiled, precision)
        # A compiled step's first calls compile its forward and backward: never timed.
        for _ in range(max(args.warmup, 3) if compiled else args.warmup):
            steps[name]()
    # The models take turns, round by round: a machine that slows down mid-run slows them all alike.
    times = {name: [] for name in steps}
    for _ in range(args.rounds):
        for name, step in steps.items():
            times[name] += step_seconds(step, args.steps, dev)
    results, shares = {}, {}
    for name, stage, model, flops, trained in rows:
        seconds = statistics.median(times[name])
        if args.breakdown:
            shares[name] = step_breakdown(steps[name], max(1, args.steps // 2))
        n_trained = sum(q.numel() for q in trained.parameters())
        results[name] = chars / seconds
        print(f"{name:<30} {n_trained:>15,} {chars / seconds:>12,.0f} {flops / seconds / 1e9:>9.1f} "
              f"{100 * flops / seconds / 1e9 / peak:>6.1f}%")
    gru_speed = results[gru_name]
    print("\n" + "   ".join(f"stage {k} / GRU: {results[rows[k - 2][0]] / gru_speed:.2f}x" for k in (2, 3, 4)))
    print("\n".join(f"{name} / GRU: {results[name] / gru_speed:.2f}x" for name, *_ in rows[4:]))
    if timed:
        gru_compiled = results[f"{gru_name}, compiled"]
        print("\n".join(f"{name}, compiled / GRU, compiled: {results[f'{name}, compiled'] / gru_compiled:.2f}x"
                        for name in timed[1:]))
    if shares:
        print(f"\n{'share of step time (profiled)':<42}" + "".join(f"{k:>17}" for k in next(iter(shares.values()))))
        for name, share in shares.items():
            print(f"{name:<42}" + "".join(f"{100 * v:>16.1f}%" for v in share.values()))

    N = cfg.d_state
    a = torch.rand(N, device=dev, requires_grad=True)
    a_t = torch.rand(B, T, N, device=dev, requires_grad=True)  # selective / word-rate level 3
    b = torch.randn(B, T, N, device=dev, requires_grad=True)
    scans = {
        f"linear_scan, {'sequential' if dev == 'cpu' else 'chunked'} (auto)": lambda: linear_scan(a, b),
        "linear_scan, sequential": lambda: linear_scan(a, b, kernel="sequential"),
        f"linear_scan, chunked (L={cfg.chunk_size})": lambda: linear_scan(a, b, chunk_size=cfg.chunk_size, kernel="chunked"),
        "reference loop (autograd)": lambda: reference_scan(a, b),
        "time-varying a, sequential": lambda: linear_scan(a_t, b, kernel="sequential"),
        f"time-varying a, chunked (L={cfg.chunk_size})": lambda: linear_scan(a_t, b, chunk_size=cfg.chunk_size,
                                                                          kernel="chunked"),
        "time-varying a, reference loop": lambda: reference_scan(a_t, b),
    }
    print(f"\nscan forward + backward, B x T x N = {B} x {T} x {N}:")
    for name, scan in scans.items():
        seconds = median_seconds(lambda: scan().sum().backward(), max(3, args.steps // 2), 1, dev)
        print(f"  {name:<32} {1e3 * seconds:8.1f} ms")

if __name__ == "__main__":
    main()
