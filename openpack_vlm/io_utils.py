"""The one atomic writer and the one error summary of the package (and of the scripts).

Every file or directory this project writes appears complete or not at all: it is written under a temporary name in
the same folder and renamed (``os.replace`` is atomic on one filesystem), so a crash, Ctrl-C or full disk never leaves
a half-written results.json, shard manifest or adapter behind for a later reader or resume to trip over.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def one_line(exc: BaseException, limit: int = 300, with_type: bool = False) -> str:
    """An exception as one line for users: its message with whitespace collapsed (its type name when empty),
    cut at ``limit`` characters; ``with_type`` prefixes ``TypeName: ``."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    if with_type and text != type(exc).__name__:
        text = f"{type(exc).__name__}: {text}"
    return text[:limit]


class AtomicPath:
    """A temporary sibling of ``path`` (a file, or an empty folder with ``directory=True``) to fill; ``commit()``
    puts it in place in one rename (an existing folder is swapped out and removed), ``abort()`` removes it.

    The temporary name starts with a dot and ends in ``.tmp``, so globs such as ``shard-*.tar`` never see it. For
    writers that fill a file over many calls (``shards.ShardWriter``); one-shot writes use ``atomic_path``."""

    def __init__(self, path: str | os.PathLike, directory: bool = False):
        self.path, self.directory = Path(path), directory
        self.path.parent.mkdir(parents=True, exist_ok=True)
        prefix, parent = f".{self.path.name}.", self.path.parent
        if directory:
            self.tmp = Path(tempfile.mkdtemp(dir=parent, prefix=prefix, suffix=".tmp"))
        else:
            fd, name = tempfile.mkstemp(dir=parent, prefix=prefix, suffix=".tmp")
            os.close(fd)
            self.tmp = Path(name)
            os.chmod(self.tmp, 0o644)  # mkstemp makes 0600; results and data are meant to be read by others

    def commit(self) -> Path:
        if self.directory and self.path.is_dir():
            old = self.path.with_name(f".{self.path.name}.old.tmp")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(self.path, old)
            os.replace(self.tmp, self.path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(self.tmp, self.path)
        return self.path

    def abort(self) -> None:
        if self.tmp.is_dir():
            shutil.rmtree(self.tmp, ignore_errors=True)
        else:
            self.tmp.unlink(missing_ok=True)


@contextmanager
def atomic_path(path: str | os.PathLike, directory: bool = False) -> Iterator[Path]:
    """``with atomic_path(p) as tmp:`` fill ``tmp``; on success it replaces ``p`` in one rename, on any error it is
    removed (see ``AtomicPath``)."""
    target = AtomicPath(path, directory)
    try:
        yield target.tmp
        target.commit()
    except BaseException:
        target.abort()
        raise


def read_json(path: str | os.PathLike, what: str, error: type[Exception] = ValueError) -> Any:
    """A JSON file's content; a missing file or invalid JSON raises ``error`` with one line naming ``what``."""
    path = Path(path)
    if not path.is_file():
        raise error(f"{what} not found: {path}")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise error(f"{what} {path} is not valid JSON ({e.msg} at line {e.lineno})") from None
    except UnicodeDecodeError:
        raise error(f"{what} {path} is not a text file") from None


def write_atomic(path: str | os.PathLike, data: str | bytes) -> Path:
    """Write text or bytes to ``path`` atomically (see ``atomic_path``)."""
    with atomic_path(path) as tmp:
        if isinstance(data, bytes):
            tmp.write_bytes(data)
        else:
            tmp.write_text(data)
    return Path(path)


def write_json(path: str | os.PathLike, obj: Any, indent: int | None = 1) -> Path:
    """``obj`` as sorted, indented JSON (one trailing newline), written atomically."""
    return write_atomic(path, json.dumps(obj, indent=indent, sort_keys=True) + "\n")


def write_jsonl(path: str | os.PathLike, rows) -> Path:
    """One JSON object per line (sorted keys), written atomically."""
    return write_atomic(path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows))


def save_figure(fig, path: str | os.PathLike, dpi: int = 110) -> Path:
    """A matplotlib figure as PNG, written atomically, then closed."""
    import matplotlib.pyplot as plt

    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi)
    plt.close(fig)
    return Path(path)
