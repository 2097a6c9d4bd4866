"""Download OpenPack's public data from Zenodo into an OpenPack root.

    python -m openpack_vlm.data.download --out openpack                 # the preprocessed keypoint CSVs (~200 MB)
    python data_pipeline.py --download openpack --out data              # download, then build the shards from it

What it fetches by default: record 11059235 (OpenPack's preprocessed Kinect 2D keypoints with operation and action
labels), file ``kinect-2d-kpt-with-operation-action-labels.zip``, unpacked to
``{out}/kinect-2d-kpt-with-operation-action-labels/{user}-{session}.csv`` — the layout ``data/openpack.py`` reads.
``--record`` / ``--files`` pick other records and files (glob patterns over the record's file names).

How: the Zenodo records API (``{zenodo_url}/api/records/{record}``) gives each file's name, size, md5 checksum and
download link. A file goes to ``{out}/.downloads/{name}.part``; an interrupted transfer resumes from its size with an
HTTP Range request (a server that ignores Range restarts it); the finished file must match the record's size and md5
(a mismatch deletes it and fetches again, ``retries`` times). A zip is unpacked into a temporary folder beside its
target and renamed into place (never half-unpacked); ``{out}/.openpack-download.json`` records what was unpacked
with its md5, so a second run downloads nothing. Errors are one line naming the URL and the manual alternative.
"""
from __future__ import annotations

import fnmatch
import hashlib
import http.client
import json
import os
import shutil
import socket
import sys
import time
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from ..cli import run_command, setting
from ..io_utils import atomic_path, one_line, read_json, write_json

ZENODO_URL = "https://zenodo.org"
PREPROCESSED_RECORD = "11059235"  # "OpenPack: preprocessed Kinect 2D keypoints with operation/action labels"
PREPROCESSED_FILES = ("kinect-2d-kpt-with-operation-action-labels.zip",)
MANIFEST = ".openpack-download.json"
CHUNK = 1 << 20  # bytes per read (1 MiB)


class DownloadError(RuntimeError):
    """The download cannot be done as asked (one-line message)."""


@dataclass
class DownloadConfig:
    """Download settings (``python -m openpack_vlm.data.download`` flags are generated from these fields)."""

    out: str = setting(help="OpenPack root to download and unpack into (then use it as --root / OPENPACK_ROOT)")
    record: str = setting(PREPROCESSED_RECORD, "Zenodo record id")
    files: list[str] = setting(help="file names or glob patterns of the record to fetch",
                               default_factory=lambda: list(PREPROCESSED_FILES))
    zenodo_url: str | None = setting(None, f"Zenodo base URL; unset = $OPENPACK_ZENODO_URL, else {ZENODO_URL}")
    retries: int = setting(3, "attempts per file (interrupted transfers resume, corrupt files are fetched again)")
    timeout_s: float = setting(60.0, "socket timeout per request (s)")
    keep_archives: bool = setting(False, "keep the downloaded zips in {out}/.downloads after unpacking")
    progress: bool = setting(True, "show a progress bar per file")


def base_url(cfg: DownloadConfig) -> str:
    return (cfg.zenodo_url or os.environ.get("OPENPACK_ZENODO_URL") or ZENODO_URL).rstrip("/")


def _manual(cfg: DownloadConfig) -> str:
    return f"download the files by hand from {base_url(cfg)}/records/{cfg.record} and unpack them into {cfg.out}"


def _open(url: str, cfg: DownloadConfig, headers: dict | None = None):
    req = urllib.request.Request(url, headers={"User-Agent": "openpack-vlm", **(headers or {})})
    try:
        return urllib.request.urlopen(req, timeout=cfg.timeout_s)  # noqa: S310 (http/https URLs from the API)
    except urllib.error.HTTPError as e:
        if e.code == 416:  # range not satisfiable: the .part file is already complete or longer than the file
            return e
        raise DownloadError(f"{url}: HTTP {e.code} {e.reason}" + (
            f" (record {cfg.record} or this file does not exist there)" if e.code == 404 else "") +
            f"; {_manual(cfg)}") from None
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise DownloadError(f"cannot reach {url} ({one_line(reason)}); no network? {_manual(cfg)}") from None


def record_files(cfg: DownloadConfig) -> list[dict]:
    """The record's files matching ``cfg.files``: [{"key", "size", "md5", "url"}], from the records API."""
    url = f"{base_url(cfg)}/api/records/{cfg.record}"
    with _open(url, cfg, {"Accept": "application/json"}) as resp:
        try:
            meta = json.loads(resp.read().decode("utf-8"))
        except (ValueError, UnicodeDecodeError):
            raise DownloadError(f"{url}: not a Zenodo record (the answer is not JSON)") from None
    files = []
    for f in meta.get("files") or []:
        algo, _, digest = str(f.get("checksum", "")).partition(":")
        links = f.get("links") or {}
        link = links.get("content") or links.get("self") or links.get("download")
        key = f.get("key") or f.get("filename")  # "filename" in Zenodo's older serialisation
        if algo != "md5" or not link or not key:
            raise DownloadError(f"{url}: file entry {str(f)[:80]} lacks a name, an md5 checksum or a link")
        files.append({"key": key, "size": int(f.get("size", f.get("filesize", -1))), "md5": digest, "url": link})
    chosen = [f for f in files if any(fnmatch.fnmatch(f["key"], pat) for pat in cfg.files)]
    missing = [pat for pat in cfg.files if not any(fnmatch.fnmatch(f["key"], pat) for f in files)]
    if missing:
        names = ", ".join(f["key"] for f in files[:8]) or "none"
        raise DownloadError(f"record {cfg.record} has no file matching {missing[0]!r} (it has: {names})")
    return chosen


def md5sum(path: Path) -> str:
    h = hashlib.md5()  # noqa: S324 (Zenodo's published checksum, not a security use)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def fetch(f: dict, dest: Path, cfg: DownloadConfig) -> Path:
    """Download one file to ``dest`` (resuming ``dest.part``), verified against its size and md5."""
    part = dest.with_name(dest.name + ".part")
    dest.parent.mkdir(parents=True, exist_ok=True)
    if dest.is_file() and md5sum(dest) == f["md5"]:
        return dest
    last = "no attempt"
    for attempt in range(1, max(1, cfg.retries) + 1):
        have = part.stat().st_size if part.is_file() else 0
        if 0 < f["size"] <= have:  # complete (or too long): check below
            complete = True
        else:
            complete = False
            try:
                resp = _open(f["url"], cfg, {"Range": f"bytes={have}-"} if have else None)
                with resp:
                    status = getattr(resp, "status", None) or resp.getcode()
                    mode = "ab" if (have and status == 206) else "wb"  # 200: the server sent it all again
                    start = have if mode == "ab" else 0
                    with open(part, mode) as out, tqdm(total=f["size"] if f["size"] > 0 else None, initial=start,
                                                       unit="B", unit_scale=True, desc=f["key"],
                                                       disable=not cfg.progress, file=sys.stderr) as bar:
                        while status != 416:
                            block = resp.read(CHUNK)
                            if not block:
                                break
                            out.write(block)
                            bar.update(len(block))
            except (http.client.IncompleteRead, ConnectionError, socket.timeout, TimeoutError) as e:
                last = f"transfer interrupted at {part.stat().st_size if part.is_file() else 0} bytes ({one_line(e)})"
                time.sleep(min(2.0, 0.2 * attempt))
                continue
        size = part.stat().st_size if part.is_file() else 0
        if f["size"] > 0 and size < f["size"]:
            last = f"transfer ended at {size} of {f['size']} bytes"
            continue
        got = md5sum(part)
        if got == f["md5"] and (f["size"] < 0 or size == f["size"]):
            os.replace(part, dest)
            return dest
        last = f"checksum mismatch (md5 {got}, the record says {f['md5']}; {size} bytes)"
        part.unlink()  # corrupt: fetch it again from the start
    raise DownloadError(f"{f['url']}: {last} after {cfg.retries} attempt(s); {_manual(cfg)}")


def unpack(archive: Path, out: Path) -> Path:
    """Unpack a zip into ``out``: a single top-level folder keeps its name, loose files go to ``out/{zip stem}``.
    Extracted into a temporary folder first and renamed into place, so the target is whole or absent."""
    try:
        zf = zipfile.ZipFile(archive)
    except zipfile.BadZipFile:
        raise DownloadError(f"{archive}: not a zip file") from None
    with zf:
        names = [n for n in zf.namelist() if n and not n.startswith("__MACOSX")]
        for n in names:  # refuse absolute paths and "..": a zip must not write outside its folder
            if n.startswith("/") or ".." in Path(n).parts:
                raise DownloadError(f"{archive}: unsafe path {n!r} in the zip")
        tops = {n.split("/", 1)[0] for n in names}
        single = len(tops) == 1 and all("/" in n for n in names)
        target = out / (next(iter(tops)) if single else archive.name.rsplit(".", 1)[0])
        with atomic_path(target, directory=True) as tmp:
            for n in names:
                zf.extract(n, tmp)
            if single:  # tmp/<top>/... → tmp/...
                inner = tmp / next(iter(tops))
                for child in inner.iterdir():
                    child.rename(tmp / child.name)
                inner.rmdir()
    return target


def download(cfg: DownloadConfig) -> dict:
    """Fetch, verify and unpack the chosen files into ``cfg.out``; returns {file: {"md5", "path", "fetched"}}."""
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    manifest_path = out / MANIFEST
    manifest = read_json(manifest_path, "download manifest", DownloadError) if manifest_path.is_file() else {}
    done = {}
    for f in record_files(cfg):
        prev = manifest.get(f["key"])
        if prev and prev.get("md5") == f["md5"] and Path(prev["path"]).exists():
            done[f["key"]] = {**prev, "fetched": False}
            continue
        archive = fetch(f, out / ".downloads" / f["key"], cfg)
        if zipfile.is_zipfile(archive):
            target = unpack(archive, out)
            if not cfg.keep_archives:
                archive.unlink()
        else:  # a plain file (e.g. a CSV) stays where it is, moved into the root
            target = out / f["key"]
            os.replace(archive, target)
        manifest[f["key"]] = {"md5": f["md5"], "path": str(target), "record": cfg.record}
        write_json(manifest_path, manifest)
        done[f["key"]] = {**manifest[f["key"]], "fetched": True}
    downloads = out / ".downloads"
    if downloads.is_dir() and not any(downloads.iterdir()):
        shutil.rmtree(downloads)
    return done


def main(argv=None) -> int:
    cfg, done = run_command(DownloadConfig, argv, download, (DownloadError, OSError),
                            prog="python -m openpack_vlm.data.download", description=__doc__.split("\n")[0])
    if done is None:
        return 1
    for key, d in done.items():
        print(f"{key}: {'downloaded and unpacked' if d['fetched'] else 'already there'} -> {d['path']}")
    print(f"OpenPack root: {Path(cfg.out).resolve()}  (export OPENPACK_ROOT={Path(cfg.out).resolve()})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
