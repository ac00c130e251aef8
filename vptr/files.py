"""Writing outputs so that a kill at any instant never leaves something that looks finished.

One mechanism for every output directory of the project (checkpoints, decoded-frame
caches, generated datasets): :func:`building` yields a hidden temporary sibling of the
target, and publishes it with a rename once the block has completed; a failure deletes
it. A rename is atomic on POSIX file systems, so readers see either nothing, the old
copy or the complete new one. Temporary folders are named
``.<target>.tmp-<host>-<pid>-<random>`` so that those left by killed processes on this
host are recognised and removed by the next build in the same folder.

Single files are replaced the same way by :func:`atomic_write_text`.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from vptr.errors import DataError

_TEMP = re.compile(r"^\.(?P<name>.+)\.tmp-(?P<host>.+)-(?P<pid>\d+)-[0-9a-f]+$")


def _temp_name(name: str) -> str:
    return f".{name}.tmp-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Replace ``path`` by ``text`` atomically (write a sibling, then rename over it)."""
    path = Path(path)
    tmp = path.with_name(_temp_name(path.name))
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def read_json_object(folder: str | os.PathLike, name: str, what: str) -> dict[str, Any]:
    """``folder/name`` as a JSON object; a missing file says ``folder`` is not ``what``, an
    unreadable or non-object one names the file (DataError either way)."""
    path = Path(folder) / name
    try:
        values = json.loads(path.read_text())
    except FileNotFoundError:
        raise DataError(f"{folder}: not {what} (no {name})") from None
    except (OSError, ValueError) as e:
        raise DataError(f"{path}: not readable JSON ({e})") from None
    if not isinstance(values, dict):
        raise DataError(f"{path}: expected a JSON object")
    return values


def ensure_dir(path: str | os.PathLike, what: str = "directory") -> Path:
    """``mkdir -p`` that reports a directory we cannot create or write into as one
    DataError naming it (read-only disk, a file in the way, no permission)."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".write-test-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise DataError(f"{path}: the {what} is not writable ({e.strerror or e})") from None
    return path


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def remove_dead_temps(parent: Path) -> None:
    """Delete temporary folders in ``parent`` whose builder, a process on this host, died."""
    host = socket.gethostname()
    for p in Path(parent).glob(".*.tmp-*"):
        m = _TEMP.match(p.name)
        if m and m["host"] == host and not _pid_alive(int(m["pid"])):
            shutil.rmtree(p, ignore_errors=True)


def publish(tmp: Path, target: Path) -> None:
    """Move the finished folder ``tmp`` to ``target`` atomically, replacing an old copy.

    The old copy is moved aside before the new one is renamed in, so ``target`` is missing
    only for that instant and is never half-written. If another process publishes the same
    target at the same moment, one complete copy wins and ours is discarded (both were built
    from the same inputs).
    """
    try:
        os.rename(tmp, target)
        return
    except OSError:
        pass  # target exists (a stale copy, or another process published first)
    old = target.parent / _temp_name(target.name)
    try:
        os.rename(target, old)
    except FileNotFoundError:
        pass
    try:
        os.rename(tmp, target)
    except OSError:
        pass  # another builder won the race; its copy is equivalent
    shutil.rmtree(old, ignore_errors=True)


@contextmanager
def building(target: str | os.PathLike, what: str = "output directory") -> Iterator[Path]:
    """Build the folder ``target``: yields an empty temporary sibling to fill; when the
    block ends without an exception the sibling is published at ``target`` (replacing an
    old copy), otherwise it is deleted. A parent folder that cannot be written raises a
    DataError naming it (``what`` says what it is) before anything is built."""
    target = Path(target)
    parent = ensure_dir(target.parent, what)
    remove_dead_temps(parent)
    tmp = parent / _temp_name(target.name)
    tmp.mkdir()
    try:
        yield tmp
        publish(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
