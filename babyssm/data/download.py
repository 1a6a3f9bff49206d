"""``babyssm download``: fetch the official BabyLM strict-small text and evaluation data.

Where the data comes from (looked up for this module; both are public OSF
projects, read through the OSF API v2, https://api.osf.io/v2/):

- Text: the BabyLM data project https://osf.io/ad7qg/, folder ``text_data/``:
  ``train_10M.zip`` (the strict-small 10M-word training set, unpacking to
  ``train_10M/*.train``; its direct link is https://osf.io/download/5mk3x/,
  18,139,949 bytes) and ``dev.zip`` (``dev/*.dev``). The 2025 challenge reuses
  this text. (The Hugging Face dataset ``BabyLM-community/babylm-eng`` is gated
  behind a login and holds the BabyBabelLM English collection as parquet, so it is
  not used here.)
- Evaluation: the 2025 evaluation pipeline's data, https://osf.io/ryjfm/ (as
  linked from github.com/babylm/evaluation-pipeline-2025), folder
  ``evaluation_data/full_eval/``: ``blimp_filtered``, ``supplement_filtered``,
  ``ewok_filtered``, ``entity_tracking`` and ``wug_adj_nominalization``.

Checksums: OSF publishes a sha256 for every stored file (``attributes.extra.
hashes.sha256`` in the API); each download is checked against it. Where none is
published (a mirror without a ``SHA256SUMS`` file, or an OSF entry without
hashes), the sha256 computed at download time is recorded in
``CACHE/checksums.json`` and every later run verifies the cached file against it
("trust on first use"); the record says which kind each checksum is.

A mirror (``--base-url URL``, http(s):// or file://) serves ``train_10M.zip``,
``dev.zip`` and ``evaluation_data.zip`` (holding ``.../full_eval/<task>/`` or
``<task>/`` folders) and optionally ``SHA256SUMS`` (``sha256  name`` lines).

Layout written under ``CACHE/data`` (what ``babyssm prepare`` and the evaluation
read; point ``--data`` or ``BABYSSM_DATA`` at it)::

    CACHE/downloads/...            verified archives and files, reused on re-runs
    CACHE/checksums.json           sha256 of each, published or recorded
    CACHE/data/babylm/train/*.train
    CACHE/data/babylm/dev/*.dev
    CACHE/data/eval/<task>/*.jsonl

Symbols: none (no arrays here). Only the standard library is used. Offline, the first request fails within the
connect timeout (``--timeout``, default 5 s) with a one-line message saying how
to use a local copy instead.

Example::

    babyssm download                      # ~/.cache/babyssm/data
    export BABYSSM_DATA=~/.cache/babyssm/data
    babyssm prepare --out prepared/babylm
"""

from __future__ import annotations

import hashlib
import json
import shutil
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

from babyssm import __version__
from babyssm.errors import DATA_ENV, BabySSMError
from babyssm.data.prepared import SUFFIX_SPLITS
from babyssm.io import CHUNK_BYTES, atomic_write, atomic_write_text, sha256_file

OSF_API = "https://api.osf.io/v2"
TEXT_NODE = "ad7qg"
TEXT_FILES = ("text_data/train_10M.zip", "text_data/dev.zip")
EVAL_NODE = "ryjfm"
EVAL_FOLDER = "evaluation_data/full_eval"
EVAL_TASKS = ("blimp_filtered", "supplement_filtered", "ewok_filtered", "entity_tracking",
              "wug_adj_nominalization")
REQUIRED_EVAL_TASKS = ("blimp_filtered",)
MIRROR_FILES = ("train_10M.zip", "dev.zip", "evaluation_data.zip")
TIMEOUT_S = 5.0  # connect/read timeout: offline runs fail fast
DEFAULT_CACHE = Path("~/.cache/babyssm")


@dataclass(frozen=True)
class Remote:
    key: str  # cache name, unique per source ("osf/ad7qg/text_data/dev.zip")
    url: str
    sha256: str | None  # published checksum, if any
    kind: str  # "text" (a zip of *.train/*.dev), "evalzip" or "eval/<task>"


class Fetcher:
    """Downloads into a cache with sha256 checks; see the module docstring."""

    def __init__(self, cache: Path, timeout: float = TIMEOUT_S, force: bool = False):
        self.cache = cache
        self.timeout = timeout
        self.force = force
        self.sums_path = cache / "checksums.json"
        self.sums = {}
        if self.sums_path.is_file():
            try:
                self.sums = json.loads(self.sums_path.read_text())
            except ValueError:
                raise BabySSMError(f"{self.sums_path} is not valid JSON; delete it") from None

    def open(self, url: str, missing_ok: bool = False):
        """``urlopen`` with a short timeout; None for a missing file if ``missing_ok``."""
        req = urllib.request.Request(url, headers={"User-Agent": f"babyssm/{__version__}"})
        try:
            return urllib.request.urlopen(req, timeout=self.timeout)
        except urllib.error.HTTPError as e:
            if missing_ok and e.code == 404:
                return None
            raise BabySSMError(f"{url}: HTTP {e.code} {e.reason}") from None
        except (urllib.error.URLError, OSError) as e:
            reason = getattr(e, "reason", e)
            if missing_ok and isinstance(reason, FileNotFoundError):
                return None  # file:// mirror without the file
            raise BabySSMError(
                f"cannot reach {url} ({reason}); offline? use a local copy instead: "
                f"--data DIR or {DATA_ENV}=DIR (a folder with babylm/ and eval/), "
                "or --base-url for a mirror"
            ) from None

    def read_json(self, url: str) -> dict:
        with self.open(url) as r:
            try:
                return json.loads(r.read().decode("utf-8"))
            except ValueError as e:
                raise BabySSMError(f"{url}: not JSON ({e})") from None

    def read_text(self, url: str) -> str | None:
        """The body of ``url``, or None if it does not exist (HTTP 404 / missing file)."""
        r = self.open(url, missing_ok=True)
        if r is None:
            return None
        with r:
            return r.read().decode("utf-8")

    def fetch(self, remote: Remote) -> Path:
        """The verified local copy of ``remote``, downloading it unless cached."""
        path = self.cache / "downloads" / remote.key
        known = self.sums.get(remote.key, {})
        expected = remote.sha256 or known.get("sha256")
        if path.is_file() and not self.force:
            got = sha256_file(path)
            if expected and got != expected:
                raise BabySSMError(
                    f"cached {path} is corrupt (sha256 {got[:12]}..., expected {expected[:12]}...); "
                    "delete it or pass --force"
                )
            if not expected:
                self._record(remote, got, "recorded")
            return path
        sha = hashlib.sha256()

        def download(tmp: Path) -> None:
            with self.open(remote.url) as r, open(tmp, "wb") as f:
                while block := r.read(CHUNK_BYTES):
                    sha.update(block)
                    f.write(block)
            if remote.sha256 and sha.hexdigest() != remote.sha256:
                raise BabySSMError(
                    f"{remote.url}: checksum mismatch (sha256 {sha.hexdigest()[:12]}..., published "
                    f"{remote.sha256[:12]}...); the download is corrupt, try again"
                )

        try:
            atomic_write(path, download)
        except OSError as e:
            raise BabySSMError(f"downloading {remote.url} to {path} failed: {e}") from None
        got = sha.hexdigest()
        self._record(remote, got, "published" if remote.sha256 else "recorded")
        return path

    def _record(self, remote: Remote, sha: str, kind: str) -> None:
        self.sums[remote.key] = {"sha256": sha, "checksum": kind, "url": remote.url}
        atomic_write_text(self.sums_path, json.dumps(self.sums, indent=1, sort_keys=True) + "\n")



def _osf_listing(fetcher: Fetcher, url: str) -> list[dict]:
    """All entries of an OSF API folder listing, following its pagination."""
    items = []
    while url:
        page = fetcher.read_json(url)
        items += page.get("data", [])
        url = (page.get("links") or {}).get("next")
    return items


def _osf_entry(fetcher: Fetcher, api: str, node: str, path: str) -> dict:
    """The API entry of ``path`` ("a/b/c.zip") in ``node``'s OSF storage."""
    url = f"{api}/nodes/{node}/files/osfstorage/"
    entry = None
    for part in path.split("/"):
        items = _osf_listing(fetcher, url)
        entry = next((i for i in items if i["attributes"]["name"] == part), None)
        if entry is None:
            names = sorted(i["attributes"]["name"] for i in items)
            raise BabySSMError(f"OSF project {node} has no {path} ({part!r} not among {names})")
        if entry["attributes"]["kind"] == "folder":
            url = entry["relationships"]["files"]["links"]["related"]["href"]
    return entry


def _osf_remote(node: str, path: str, entry: dict, kind: str) -> Remote:
    hashes = (entry["attributes"].get("extra") or {}).get("hashes") or {}
    return Remote(f"osf/{node}/{path}", entry["links"]["download"], hashes.get("sha256"), kind)


def osf_remotes(fetcher: Fetcher, api: str, what: str) -> list[Remote]:
    """What to fetch from the official OSF projects (see the module docstring)."""
    remotes = []
    if what in ("text", "all"):
        for path in TEXT_FILES:
            remotes.append(_osf_remote(TEXT_NODE, path, _osf_entry(fetcher, api, TEXT_NODE, path), "text"))
    if what in ("eval", "all"):
        folder = _osf_entry(fetcher, api, EVAL_NODE, EVAL_FOLDER)
        tasks = {i["attributes"]["name"]: i for i in _osf_listing(
            fetcher, folder["relationships"]["files"]["links"]["related"]["href"])}
        for task in EVAL_TASKS:
            if task not in tasks:
                if task in REQUIRED_EVAL_TASKS:
                    raise BabySSMError(f"OSF project {EVAL_NODE} has no {EVAL_FOLDER}/{task}")
                continue
            href = tasks[task]["relationships"]["files"]["links"]["related"]["href"]
            for item in _osf_listing(fetcher, href):
                name = item["attributes"]["name"]
                if item["attributes"]["kind"] == "file" and not name.startswith("."):
                    path = f"{EVAL_FOLDER}/{task}/{name}"
                    remotes.append(_osf_remote(EVAL_NODE, path, item, f"eval/{task}"))
    return remotes


def mirror_remotes(fetcher: Fetcher, base_url: str, what: str) -> list[Remote]:
    """What to fetch from a mirror laid out as MIRROR_FILES (+ optional SHA256SUMS)."""
    base = base_url if base_url.endswith("/") else base_url + "/"
    sums_text = fetcher.read_text(base + "SHA256SUMS") or ""
    sums = {}
    for line in sums_text.splitlines():
        fields = line.split()
        if len(fields) == 2:
            sums[fields[1].lstrip("*")] = fields[0].lower()
    host = urllib.parse.urlsplit(base).netloc or "local"
    wanted = {"text": MIRROR_FILES[:2], "eval": MIRROR_FILES[2:], "all": MIRROR_FILES}[what]
    return [
        Remote(f"mirror/{host}/{name}", base + name, sums.get(name),
               "evalzip" if name == "evaluation_data.zip" else "text")
        for name in wanted
    ]


def _zip_members(path: Path):
    try:
        with zipfile.ZipFile(path) as z:
            for info in z.infolist():
                parts = info.filename.replace("\\", "/").split("/")
                if info.is_dir() or any(p.startswith(".") or p == "__MACOSX" for p in parts):
                    continue
                yield parts, z, info
    except zipfile.BadZipFile:
        raise BabySSMError(f"{path} is not a zip archive; delete it and download again") from None


def _copy_member(z: zipfile.ZipFile, info: zipfile.ZipInfo, dest: Path) -> None:
    def copy(tmp: Path) -> None:
        with z.open(info) as src, open(tmp, "wb") as out:
            shutil.copyfileobj(src, out, CHUNK_BYTES)

    atomic_write(dest, copy)


def unpack(path: Path, kind: str, data_dir: Path) -> list[Path]:
    """Place a fetched file into the ``prepare`` layout; returns the files written."""
    written = []
    if kind.startswith("eval/"):
        dest = data_dir / "eval" / kind.split("/", 1)[1] / path.name
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, dest)
        return [dest]
    for parts, z, info in _zip_members(path):
        name = parts[-1]
        if kind == "text":
            split = SUFFIX_SPLITS.get(Path(name).suffix)
            if split is None:
                continue
            dest = data_dir / "babylm" / split / name
        else:
            task = next((p for p in parts[:-1] if p in EVAL_TASKS), None)
            if task is None:
                continue
            dest = data_dir / "eval" / task / name
        _copy_member(z, info, dest)
        written.append(dest)
    if not written:
        raise BabySSMError(f"{path} holds no {'text' if kind == 'text' else 'evaluation'} files")
    return written


def download(cache: str | Path = DEFAULT_CACHE, what: str = "all", base_url: str | None = None,
             osf_api: str = OSF_API, timeout: float = TIMEOUT_S, force: bool = False,
             log=print) -> Path:
    """Fetch, verify and unpack; returns the data folder (``CACHE/data``)."""
    cache = Path(cache).expanduser()
    try:
        cache.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise BabySSMError(f"cannot create cache folder {cache}: {e.strerror}") from None
    fetcher = Fetcher(cache, timeout=timeout, force=force)
    if base_url:
        remotes = mirror_remotes(fetcher, base_url, what)
    else:
        remotes = osf_remotes(fetcher, osf_api.rstrip("/"), what)
    data_dir = cache / "data"
    for remote in remotes:
        path = fetcher.fetch(remote)
        files = unpack(path, remote.kind, data_dir)
        log(f"{remote.key}: {len(files)} file(s) -> {data_dir}")
    return data_dir
