"""openpack_vlm.data.download against a Zenodo stand-in on loopback (tests/zenodo.py): records API, checksums,
resumed transfers, corrupt files, 404, no network, atomic unpacking, idempotence, and data_pipeline.py --download."""
from __future__ import annotations

import io
import json
import socket
import zipfile
from pathlib import Path

import pytest

from openpack_vlm.data import openpack
from openpack_vlm.data.download import MANIFEST, DownloadConfig, DownloadError, download, main
from zenodo import PREPROCESSED, FakeZenodo, preprocessed_zip

ZIP = f"{PREPROCESSED}.zip"


@pytest.fixture(scope="module")
def zip_bytes(synthetic_root) -> bytes:
    data = preprocessed_zip(synthetic_root)
    assert len(data) > 100_000  # big enough that "half" is a real partial transfer
    return data


def _cfg(server, out, **kw) -> DownloadConfig:
    return DownloadConfig(out=str(out), zenodo_url=server.url, progress=False, timeout_s=10, **kw)


def test_download_verifies_unpacks_and_is_idempotent(zip_bytes, synthetic_root, tmp_path, capsys):
    with FakeZenodo({ZIP: zip_bytes, "README.md": b"other file"}) as z:
        assert main(["--out", str(tmp_path / "op"), "--zenodo-url", z.url, "--no-progress"]) == 0
        first = len(z.file_requests())
        assert main(["--out", str(tmp_path / "op"), "--zenodo-url", z.url, "--no-progress"]) == 0
        assert len(z.file_requests()) == first == 1  # only the chosen file, and nothing the second time
    out = capsys.readouterr().out
    assert "downloaded and unpacked" in out and "already there" in out and "export OPENPACK_ROOT=" in out
    root = tmp_path / "op"
    got = sorted(p.name for p in (root / PREPROCESSED).glob("*.csv"))
    assert got == sorted(p.name for p in (synthetic_root / PREPROCESSED).glob("*.csv")) and got
    assert (root / PREPROCESSED / got[0]).read_bytes() == (synthetic_root / PREPROCESSED / got[0]).read_bytes()
    assert openpack.list_users(root) == openpack.list_users(synthetic_root)  # the layout data/openpack.py reads
    manifest = json.loads((root / MANIFEST).read_text())
    assert set(manifest) == {ZIP} and not (root / ".downloads").exists()  # zip removed after unpacking
    assert not list(root.glob(".*.tmp"))


def test_interrupted_transfer_resumes_with_a_range_request(zip_bytes, tmp_path):
    with FakeZenodo({ZIP: zip_bytes}) as z:
        z.faults[ZIP] = ["drop"]
        done = download(_cfg(z, tmp_path / "op"))
        reqs = z.file_requests()
    assert done[ZIP]["fetched"] and len(reqs) == 2
    assert reqs[0][1] is None and reqs[1][1] == f"bytes={len(zip_bytes) // 2}-"  # asked for the rest only
    assert (tmp_path / "op" / PREPROCESSED).is_dir()


def test_server_ignoring_range_restarts_the_file(zip_bytes, tmp_path):
    with FakeZenodo({ZIP: zip_bytes}) as z:
        z.faults[ZIP] = ["drop", "ignore_range"]
        download(_cfg(z, tmp_path / "op", keep_archives=True))
    assert (tmp_path / "op" / ".downloads" / ZIP).read_bytes() == zip_bytes


def test_corrupt_file_is_refused_and_fetched_again(zip_bytes, tmp_path):
    with FakeZenodo({ZIP: zip_bytes}) as z:
        z.faults[ZIP] = ["corrupt"]
        download(_cfg(z, tmp_path / "ok"))
        assert len(z.file_requests()) == 2
        z.faults[ZIP] = ["corrupt"] * 3
        with pytest.raises(DownloadError, match=r"checksum mismatch .* after 3 attempt\(s\); download the files by hand"):
            download(_cfg(z, tmp_path / "bad"))
    assert (tmp_path / "ok" / PREPROCESSED).is_dir()
    assert not (tmp_path / "bad" / PREPROCESSED).exists() and not (tmp_path / "bad" / MANIFEST).exists()


@pytest.mark.parametrize("case", ["no_record", "no_file", "no_network"])
def test_errors_are_one_line_with_the_url_and_what_to_do(case, zip_bytes, tmp_path, capsys):
    with FakeZenodo({ZIP: zip_bytes}) as z:
        url = z.url
        argv = ["--out", str(tmp_path / "op"), "--zenodo-url", url, "--no-progress", "--timeout-s", "5"]
        if case == "no_record":
            argv += ["--record", "999"]
        elif case == "no_file":
            argv += ["--files", "annotations.zip"]
        if case == "no_network":  # a port nobody listens on
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            url = f"http://127.0.0.1:{s.getsockname()[1]}"
            s.close()
            argv[3] = url
        assert main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err
    if case == "no_record":
        assert f"{url}/api/records/999: HTTP 404" in err and f"by hand from {url}/records/999" in err
    elif case == "no_file":
        assert "no file matching 'annotations.zip'" in err and ZIP in err
    else:
        assert f"cannot reach {url}/api/records/11059235" in err and "no network?" in err and "by hand" in err
    assert not (tmp_path / "op" / PREPROCESSED).exists()


def test_unsafe_zip_paths_are_refused(tmp_path):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("../evil.csv", "x")
    with FakeZenodo({"evil.zip": buf.getvalue()}) as z:
        with pytest.raises(DownloadError, match="unsafe path '../evil.csv'"):
            download(_cfg(z, tmp_path / "op", files=["evil.zip"]))
    assert not (tmp_path / "evil.csv").exists()


def test_data_pipeline_download_then_build(zip_bytes, tmp_path):
    """``data_pipeline.py --download DIR`` fetches the record into DIR and builds the shards from it (pose frames
    from the preprocessed keypoints)."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import data_pipeline

    with FakeZenodo({ZIP: zip_bytes}) as z:
        rc = data_pipeline.main(["--download", str(tmp_path / "op"), "--zenodo-url", z.url, "--out",
                                 str(tmp_path / "data"), "--splits", "train=U0101", "val=U0107", "test=U0108"])
    assert rc == 0
    summary = json.loads((tmp_path / "data" / "summary.json").read_text())
    assert Path(summary["root"]) == (tmp_path / "op") and (tmp_path / "data" / "test" / "manifest.jsonl").is_file()
