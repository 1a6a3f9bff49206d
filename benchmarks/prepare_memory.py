"""Wall time and peak memory of ``babyssm prepare``, on the real corpus and on ~500 MB.

Each measurement runs in its own child process; its peak resident set size is the
child's ``ru_maxrss`` (from ``os.wait4``: the figure ``getrusage(RUSAGE_CHILDREN)``
gives for a single child). References in the same run:

- ``import only``: a child that imports ``babyssm.data.prepared`` and exits (the floor of
  any prepare's RSS);
- ``read + sha256``: a child that only reads and hashes the same input in 1 MiB
  blocks (the I/O floor of any prepare's time).

Cases: the shared BabyLM folder as is, and a single ~500 MB ``.train`` file made
by repeating its files, written to a temporary folder that is deleted afterwards.
A prepare that streams in bounded memory has about the same peak RSS on both.

    nice -n 10 python benchmarks/prepare_memory.py --data /work/shared/data/babylm
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

READ_ONLY = """
import hashlib, sys
from pathlib import Path
root = Path(sys.argv[1])
files = [root] if root.is_file() else sorted(p for p in root.rglob('*') if p.is_file())
for p in files:
    h = hashlib.sha256()
    with open(p, 'rb') as f:
        while b := f.read(1 << 20):
            h.update(b)
"""
PREPARE = "import sys; from babyssm.data.prepared import prepare; prepare([sys.argv[1]], sys.argv[2])"
IMPORT_ONLY = "import babyssm.data.prepared"


def run_child(code: str, *args: str) -> tuple[float, float]:
    """(wall seconds, peak RSS in MiB) of ``python -c code args...``."""
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", code, *args])
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"child failed with status {proc.returncode}: {code[:60]}...")
    return wall, usage.ru_maxrss / 1024  # ru_maxrss is in KiB on Linux


def input_bytes(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def build_big(src: Path, dest: Path, target: int) -> None:
    """Concatenate the text files of ``src`` again and again until ``target`` bytes."""
    files = sorted(p for p in src.rglob("*") if p.suffix in (".train", ".dev", ".test", ".txt"))
    written = 0
    with open(dest, "wb") as out:
        while written < target:
            for p in files:
                data = p.read_bytes()
                out.write(data if data.endswith(b"\n") else data + b"\n")
                written += len(data)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default=os.path.join(os.environ.get("BABYSSM_DATA", ""), "babylm"),
                        help="BabyLM release folder (default: $BABYSSM_DATA/babylm)")
    parser.add_argument("--big-mb", type=int, default=500, help="size of the repeated file in MB")
    args = parser.parse_args()
    src = Path(args.data)
    if not src.is_dir():
        raise SystemExit(f"{src} is not a folder; pass --data")

    rows = []
    wall, rss = run_child(IMPORT_ONLY)
    rows.append(("import only", 0, wall, rss))
    with tempfile.TemporaryDirectory(prefix="babyssm-bench-") as tmp:
        tmp = Path(tmp)
        big = tmp / "big" / "repeated.train"
        big.parent.mkdir()
        build_big(src, big, args.big_mb * 10**6)
        for label, path in (("corpus", src), (f"{args.big_mb} MB file", big)):
            size = input_bytes(path)
            wall, rss = run_child(READ_ONLY, str(path))
            rows.append((f"read + sha256, {label}", size, wall, rss))
            out = tmp / f"out-{len(rows)}"
            wall, rss = run_child(PREPARE, str(path), str(out))
            rows.append((f"prepare, {label}", size, wall, rss))
    print(f"{'case':28s} {'input MB':>9s} {'wall s':>8s} {'MB/s':>7s} {'peak RSS MiB':>13s}")
    for label, size, wall, rss in rows:
        rate = f"{size / 1e6 / wall:7.1f}" if size else f"{'-':>7s}"
        print(f"{label:28s} {size / 1e6:9.1f} {wall:8.1f} {rate} {rss:13.1f}")


if __name__ == "__main__":
    main()
