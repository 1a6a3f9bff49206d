"""Tests of babyssm.data.download against local servers (no network needed)."""

import functools
import hashlib
import http.server
import json
import socket
import threading
import zipfile
from pathlib import Path

import pytest

from babyssm.commands.main import main
from babyssm.data.prepared import load_split, prepare
from babyssm.data.download import download
from babyssm.errors import BabySSMError

BLIMP = "blimp_filtered/anaphor_gender_agreement.jsonl"


def head(path: Path, size: int) -> bytes:
    raw = path.read_bytes()[:size]
    return raw[: raw.rfind(b"\n") + 1]


@pytest.fixture
def payload(data_root):
    """Small real files as the official archives name them."""
    return {
        "train_10M/childes.train": head(data_root / "babylm/train/2023_aochildes.train", 3000),
        "train_10M/switchboard.train": head(data_root / "babylm/train/2024_switchboard.train", 3000),
        "dev/childes.dev": head(data_root / "babylm/dev/2023_aochildes.dev", 2000),
        f"evaluation_data/full_eval/{BLIMP}": head(data_root / "eval" / BLIMP, 3000),
    }


def write_zip(path: Path, members: dict[str, bytes]) -> bytes:
    with zipfile.ZipFile(path, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)
        z.writestr("__MACOSX/._junk.train", b"\x00\x01")
    return path.read_bytes()


@pytest.fixture
def mirror(tmp_path, payload):
    root = tmp_path / "mirror"
    root.mkdir()
    zips = {
        "train_10M.zip": {k: v for k, v in payload.items() if k.startswith("train_10M/")},
        "dev.zip": {k: v for k, v in payload.items() if k.startswith("dev/")},
        "evaluation_data.zip": {k: v for k, v in payload.items() if k.startswith("evaluation")},
    }
    sums = [f"{hashlib.sha256(write_zip(root / n, m)).hexdigest()}  {n}" for n, m in zips.items()]
    (root / "SHA256SUMS").write_text("\n".join(sums) + "\n")
    return root


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def serve():
    servers = []

    def start(handler):
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nothing listens once it is closed


def check_layout(data_dir: Path, payload: dict) -> None:
    assert (data_dir / "babylm/train/childes.train").read_bytes() == payload["train_10M/childes.train"]
    assert (data_dir / "babylm/dev/childes.dev").read_bytes() == payload["dev/childes.dev"]
    assert (data_dir / "eval" / BLIMP).read_bytes() == payload[f"evaluation_data/full_eval/{BLIMP}"]
    assert not list(data_dir.rglob("._junk*"))


def test_mirror_download_verify_unpack_and_reuse(mirror, payload, serve, tmp_path, capsys):
    url = serve(functools.partial(QuietHandler, directory=str(mirror)))
    cache = tmp_path / "cache"
    data_dir = download(cache, base_url=url, log=lambda m: None)
    check_layout(data_dir, payload)
    sums = json.loads((cache / "checksums.json").read_text())
    assert {v["checksum"] for v in sums.values()} == {"published"}
    meta = prepare([data_dir / "babylm"], tmp_path / "prep")  # the layout prepare reads
    assert set(meta["splits"]) == {"train", "dev"} and len(load_split(tmp_path / "prep", "dev")) > 0

    (mirror / "train_10M.zip").unlink()  # a re-run must reuse the verified cache
    assert main(["download", "--cache", str(cache), "--base-url", url]) == 0

    cached = next((cache / "downloads").rglob("train_10M.zip"))
    cached.write_bytes(cached.read_bytes()[:-1] + b"!")
    assert main(["download", "--cache", str(cache), "--base-url", url]) == 2
    err = capsys.readouterr().err
    assert "train_10M.zip is corrupt" in err and err.count("\n") == 1


def test_mirror_checksum_mismatch_leaves_nothing(mirror, serve, tmp_path):
    lines = (mirror / "SHA256SUMS").read_text().splitlines()
    (mirror / "SHA256SUMS").write_text(
        "\n".join("0" * 64 + "  dev.zip" if line.endswith(" dev.zip") else line for line in lines))
    url = serve(functools.partial(QuietHandler, directory=str(mirror)))
    with pytest.raises(BabySSMError, match=r"dev.zip: checksum mismatch"):
        download(tmp_path / "cache", what="text", base_url=url, log=lambda m: None)
    assert not list((tmp_path / "cache" / "downloads").rglob("dev.zip*"))


def test_file_mirror_without_sums_records_then_verifies(mirror, payload, tmp_path):
    (mirror / "SHA256SUMS").unlink()
    cache = tmp_path / "cache"
    data_dir = download(cache, base_url=mirror.as_uri(), log=lambda m: None)
    check_layout(data_dir, payload)
    sums = json.loads((cache / "checksums.json").read_text())
    assert {v["checksum"] for v in sums.values()} == {"recorded"}
    cached = next((cache / "downloads").rglob("dev.zip"))
    cached.write_bytes(b"tampered")
    with pytest.raises(BabySSMError, match="dev.zip is corrupt"):
        download(cache, base_url=mirror.as_uri(), log=lambda m: None)


@pytest.mark.parametrize("mode", ["mirror", "osf"])
def test_offline_fails_fast_with_local_copy_hint(mode, tmp_path, capsys):
    url = f"http://127.0.0.1:{closed_port()}"
    flag = ["--base-url", url] if mode == "mirror" else ["--osf-api", url + "/v2"]
    assert main(["download", "--cache", str(tmp_path / "c"), *flag]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot reach" in err
    assert "--data" in err and "BABYSSM_DATA" in err


def osf_handler(files: dict[str, bytes], bad_sha: str | None = None):
    """An HTTP handler answering the OSF API v2 storage listing calls for ``files``."""

    class Handler(QuietHandler):
        def do_GET(self):
            base = f"http://{self.headers['Host']}"
            path, _, query = self.path.partition("?")
            if path.startswith("/download/"):
                return self.send(files[path[len("/download/"):]], "application/octet-stream")
            # /v2/nodes/<node>/files/osfstorage/<folder path>/
            node, _, folder = path.removeprefix("/v2/nodes/").partition("/files/osfstorage/")
            prefix = f"{node}/{folder}"
            children = sorted({k[len(prefix):].split("/")[0] for k in files if k.startswith(prefix)})
            items = []
            for name in children:
                key = prefix + name
                if key in files:
                    sha = bad_sha or hashlib.sha256(files[key]).hexdigest()
                    items.append({"attributes": {"kind": "file", "name": name,
                                                 "extra": {"hashes": {"sha256": sha}}},
                                  "links": {"download": f"{base}/download/{key}"}})
                else:
                    href = f"{base}/v2/nodes/{node}/files/osfstorage/{folder}{name}/"
                    items.append({"attributes": {"kind": "folder", "name": name},
                                  "relationships": {"files": {"links": {"related": {"href": href}}}}})
            page = int(query.removeprefix("page=") or 1)  # two entries a page: test paging
            body = {"data": items[2 * page - 2 : 2 * page], "links": {}}
            if 2 * page < len(items):
                body["links"]["next"] = f"{base}{path}?page={page + 1}"
            return self.send(json.dumps(body).encode(), "application/json")

        def send(self, data: bytes, ctype: str):
            self.send_response(200)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    return Handler


@pytest.fixture
def osf_files(payload, tmp_path):
    text = {k: v for k, v in payload.items() if not k.startswith("evaluation")}
    write_zip(tmp_path / "t.zip", {k: v for k, v in text.items() if k.startswith("train_10M/")})
    write_zip(tmp_path / "d.zip", {k: v for k, v in text.items() if k.startswith("dev/")})
    return {
        "ad7qg/text_data/train_10M.zip": (tmp_path / "t.zip").read_bytes(),
        "ad7qg/text_data/dev.zip": (tmp_path / "d.zip").read_bytes(),
        "ad7qg/text_data/train_100M.zip": b"not fetched",
        "ryjfm/evaluation_data/full_eval/" + BLIMP: payload[f"evaluation_data/full_eval/{BLIMP}"],
        "ryjfm/evaluation_data/full_eval/supplement_filtered/turn_taking.jsonl": b"{}\n",
        "ryjfm/evaluation_data/fast_eval/blimp_fast/x.jsonl": b"not fetched",
    }


def test_osf_api_download(osf_files, payload, serve, tmp_path):
    api = serve(osf_handler(osf_files)) + "/v2"
    cache = tmp_path / "cache"
    data_dir = download(cache, osf_api=api, log=lambda m: None)
    check_layout(data_dir, payload)
    assert (data_dir / "eval/supplement_filtered/turn_taking.jsonl").read_bytes() == b"{}\n"
    assert not (data_dir / "eval" / "blimp_fast").exists()
    assert {v["checksum"] for v in json.loads((cache / "checksums.json").read_text()).values()} == {
        "published"}


def test_osf_published_checksum_mismatch(osf_files, serve, tmp_path):
    api = serve(osf_handler(osf_files, bad_sha="f" * 64)) + "/v2"
    with pytest.raises(BabySSMError, match="train_10M.zip: checksum mismatch"):
        download(tmp_path / "cache", what="text", osf_api=api, log=lambda m: None)
