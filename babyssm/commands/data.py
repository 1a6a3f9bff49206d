"""``babyssm download``, ``babyssm prepare`` and ``babyssm stats``: data in."""

from __future__ import annotations

import argparse
import time

from babyssm.data import prepared as prepared_module
from babyssm.data.clean import CleanConfig
from babyssm.data.download import DEFAULT_CACHE, OSF_API, TIMEOUT_S, download
from babyssm.data.prepared import SPLITS, format_stats, load_meta, prepare
from babyssm.errors import DATA_ENV, BabySSMError, data_root


def _cmd_download(args: argparse.Namespace) -> int:
    data_dir = download(args.cache, args.what, args.base_url, args.osf_api, args.timeout, args.force)
    print(f"data ready in {data_dir}; use it with: export {DATA_ENV}={data_dir}")
    return 0


def _add_download(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("download", help="fetch the official BabyLM strict-small text and eval data",
                       description="Fetch, checksum and unpack BabyLM data into CACHE/data.")
    p.add_argument("--cache", default=str(DEFAULT_CACHE), metavar="DIR",
                   help="cache folder (default: %(default)s)")
    p.add_argument("--what", choices=("all", "text", "eval"), default="all",
                   help="text (train/dev), eval (evaluation sets) or all (default)")
    p.add_argument("--base-url", metavar="URL",
                   help="a mirror serving train_10M.zip, dev.zip, evaluation_data.zip [SHA256SUMS]")
    p.add_argument("--osf-api", default=OSF_API, metavar="URL", help="OSF API root (default: %(default)s)")
    p.add_argument("--timeout", type=float, default=TIMEOUT_S, metavar="S",
                   help="network timeout in seconds (default: %(default)s)")
    p.add_argument("--force", action="store_true", help="download again even if cached")
    p.set_defaults(func=_cmd_download)


def _cmd_prepare(args: argparse.Namespace) -> int:
    inputs = args.data
    if not inputs:
        root = data_root(None) / "babylm"
        if not root.is_dir():
            raise BabySSMError(f"{root} does not exist ({DATA_ENV} must hold babylm/); pass --data")
        inputs = [root]
    config = CleanConfig(min_symbol_run=args.min_symbol_run, strip_speaker_tags=args.strip_speaker_tags)
    t0 = time.perf_counter()
    meta = prepare(inputs, args.out, config, force=args.force, encoding_errors=args.encoding_errors,
                   log=print)
    for split in (name for name in SPLITS if name in meta["splits"]):
        s = meta["splits"][split]
        print(f"{split}: {s['chars']:,d} chars, {s['words']:,d} words from {s['sources']} files")
    print(f"wrote {args.out} in {time.perf_counter() - t0:.1f} s")
    return 0


def _cmd_stats(args: argparse.Namespace) -> int:
    print(format_stats(load_meta(args.prepared), top=args.top))
    return 0


def _add_prepare(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("prepare", help="clean a BabyLM release into train.bin/dev.bin + meta.json",
                       description=prepared_module.__doc__.split("\n\n")[0])
    p.add_argument("--data", nargs="+", metavar="DIR_OR_FILE",
                   help=f"release folder(s) or .train/.dev/.test/.txt files "
                        f"(default: ${DATA_ENV}/babylm)")
    p.add_argument("--out", required=True, metavar="PREPARED_DIR", help="output folder")
    p.add_argument("--min-symbol-run", type=int, default=CleanConfig.min_symbol_run, metavar="N",
                   help="remove runs of N or more identical symbols (default: %(default)s)")
    p.add_argument("--strip-speaker-tags", action="store_true",
                   help="remove transcript speaker tags such as 'A:<tab>' at line start")
    p.add_argument("--encoding-errors", choices=("strict", "replace"), default="strict",
                   help="invalid UTF-8: stop with an error (strict) or drop the bad bytes (replace)")
    p.add_argument("--force", action="store_true", help="overwrite an existing prepared folder")
    p.set_defaults(func=_cmd_prepare)

    s = sub.add_parser("stats", help="summarise a prepared corpus")
    s.add_argument("prepared", metavar="PREPARED_DIR")
    s.add_argument("--top", type=int, default=20, metavar="N", help="symbols to list per split")
    s.set_defaults(func=_cmd_stats)


def add_commands(sub: argparse._SubParsersAction) -> None:
    _add_download(sub)
    _add_prepare(sub)
