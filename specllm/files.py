"""File helpers every stage shares: atomic writes (a temporary sibling renamed into place, with the permissions the
umask allows), the SHA-256 of a file, replacing a directory by a complete new one, and the one CSV writer of the
report tables (`csv_text`, `write_csv`).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import secrets
import shutil
from collections.abc import Sequence
from pathlib import Path


def _unique_name(directory: str | os.PathLike, prefix: str, suffix: str, create) -> str:
    for _ in range(1000):
        name = os.path.join(directory, f"{prefix}{secrets.token_hex(6)}{suffix}")
        try:
            create(name)
        except FileExistsError:
            continue
        return name
    raise FileExistsError(f"{directory}: no unique temporary name")


def temp_file(directory: str | os.PathLike, prefix: str = ".", suffix: str = ".tmp") -> str:
    """A new empty file in `directory`, created with the permissions the umask allows (0666 & ~umask), where
    `tempfile.mkstemp` would make it 0600: files renamed into place from it stay readable to collaborators."""
    return _unique_name(
        directory, prefix, suffix, lambda n: os.close(os.open(n, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    )


def temp_dir(directory: str | os.PathLike, prefix: str = ".") -> str:
    """A new directory in `directory`, 0777 & ~umask (`tempfile.mkdtemp` makes it 0700)."""
    return _unique_name(directory, prefix, "", lambda n: os.mkdir(n, 0o777))


def umask() -> int:
    """The process's umask, read without changing it where Linux says it (/proc/self/status)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def allow_umask(path: str | os.PathLike) -> None:
    """Give a file the permissions the umask allows (0666 & ~umask): for files a library created itself with
    tighter ones (safetensors writes 0600)."""
    os.chmod(path, 0o666 & ~umask())


def atomic_write(path: str | os.PathLike, write, digest: bool = False) -> str | None:
    """Call `write(tmp_path)`, then rename the temporary file onto `path` (same directory, so rename is atomic).
    The file ends with the permissions the umask allows, even if `write` replaced the temporary file. With
    `digest`, returns the SHA-256 of the bytes written (read back while syncing them to disk)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_file(path.parent, prefix=f".{path.name}.")
    try:
        write(tmp)
        allow_umask(tmp)
        sha = file_sha256(tmp) if digest else None
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return sha


def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 of a file's bytes (read in 1 MiB blocks)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def atomic_write_json(path: str | os.PathLike, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def replace_dir(tmp: str | os.PathLike, target: str | os.PathLike) -> None:
    """Put the complete directory `tmp` in place of `target` (a sibling of it): an existing `target` is moved aside
    first and removed after the rename, so `target` is never a half-written directory. `tmp` is gone afterwards."""
    tmp, target = Path(tmp), Path(target)
    if target.exists():
        old = target.with_name(f".{target.name}.old")
        if old.exists():
            shutil.rmtree(old)
        os.replace(target, old)
        os.replace(tmp, target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, target)


def csv_text(header: Sequence[str], rows: Sequence[Sequence], float_format: str | None = None) -> str:
    """CSV of a header and rows (the csv module's quoting, "\\n" line ends): None is an empty cell, and floats go
    through `float_format` (e.g. "{:.6g}") where one is given, else Python's shortest exact form."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    for row in rows:
        if float_format:
            row = [float_format.format(v) if isinstance(v, float) else v for v in row]
        writer.writerow(row)
    return buf.getvalue()


def write_csv(
    path: str | os.PathLike, header: Sequence[str], rows: Sequence[Sequence], float_format: str | None = None
) -> None:
    """`csv_text` written atomically to `path`."""
    atomic_write_text(path, csv_text(header, rows, float_format))
