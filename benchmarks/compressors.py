"""Bits per character of general-purpose compressors on a prepared split.

The floor every language model here must beat: a compressor's output size in bits
divided by the number of characters is an upper bound on the text's entropy rate
that any reader can reproduce without babyssm.

    python benchmarks/compressors.py --data work/prepared --split dev
"""

from __future__ import annotations

import argparse
import bz2
import lzma
import time
import zlib
from pathlib import Path

COMPRESSORS = {
    "gzip -9": lambda b: zlib.compress(b, 9),
    "bzip2 -9": lambda b: bz2.compress(b, 9),
    "xz -9e": lambda b: lzma.compress(b, preset=9 | lzma.PRESET_EXTREME),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", required=True, help="prepared folder (babyssm prepare --out)")
    parser.add_argument("--split", default="dev")
    args = parser.parse_args()
    raw = (Path(args.data) / f"{args.split}.bin").read_bytes()
    print(f"{args.split}.bin: {len(raw):,} characters")
    print(f"{'compressor':<10} {'bytes':>12} {'bits/char':>10} {'seconds':>8}")
    for name, compress in COMPRESSORS.items():
        start = time.perf_counter()
        size = len(compress(raw))
        print(f"{name:<10} {size:>12,} {8 * size / len(raw):>10.3f} {time.perf_counter() - start:>8.1f}")


if __name__ == "__main__":
    main()
