"""Run-folder integrity: one writer per run folder, and checksums on exports.

Lock: a run folder is written by one process at a time. `lock_run_dir` takes an
exclusive fcntl lock on <run>/.tforge.lock and writes the holder's pid and host
into it; a second process gets RunLockedError naming the holder. The kernel
drops the lock when its holder dies (even by kill -9), so a lock file left by a
dead process is simply taken over. Locks are per process and re-entrant within
it (a command that calls another on the same folder does not lock itself out).

Export manifest: exported weights (<run>/model/, the int8 / 2:4 variants) get a
manifest.json of the same shape as a checkpoint's ({"format", "version",
"files": {name: {"sha256", "bytes"}}}, format "tforge-export"), written last so
an export interrupted midway has none. `read_verified_export` refuses a file
whose size or sha256 differs, or an export without a manifest.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any, Iterable, Optional, Union

from tforge.train.checkpoint import MANIFEST, CheckpointError, write_text_atomic

try:
    import fcntl
except ImportError:  # not POSIX: no locking (documented in docs/reliability.md)
    fcntl = None

log = logging.getLogger("tforge.train")

LOCK_FILE = ".tforge.lock"
EXPORT_FORMAT = "tforge-export"
EXPORT_VERSION = 1

PathLike = Union[str, os.PathLike]


class RunLockedError(ValueError):
    """Another live process holds the run folder's lock (a ValueError: the CLI exits 2)."""


_held: dict[str, int] = {}  # resolved run folder -> fd holding its lock in this process


def _describe(holder: dict[str, Any]) -> str:
    if not holder:
        return "another process"
    started = holder.get("started")
    when = ""
    if isinstance(started, (int, float)):
        when = time.strftime(" since %Y-%m-%d %H:%M:%S", time.localtime(started))
    return f"pid {holder.get('pid')} on host {holder.get('host')}{when} ({holder.get('command', '?')})"


def _read_holder(path: Path) -> dict[str, Any]:
    try:
        holder = json.loads(path.read_text(encoding="utf-8") or "{}")
        return holder if isinstance(holder, dict) else {}
    except (OSError, ValueError):
        return {}


def lock_run_dir(run_dir: PathLike, command: str = "") -> None:
    """Take the exclusive lock of run_dir (which must exist) for the life of this
    process or until unlock_run_dir; raise RunLockedError when another holds it."""
    run_dir = Path(run_dir)
    key = str(run_dir.resolve())
    if key in _held or fcntl is None:
        return
    path = run_dir / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise RunLockedError(f"run folder {run_dir} is in use by {_describe(_read_holder(path))}; wait for that "
                             f"run to end (or stop it), or choose another --out") from None
    previous = _read_holder(path)
    if previous.get("pid") and (previous.get("pid"), previous.get("host")) != (os.getpid(), socket.gethostname()):
        # the kernel released that holder's lock: it died without cleaning up
        log.info("run folder %s: taking over the lock left by %s (no longer running)", run_dir, _describe(previous))
    holder = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time(),
              "command": command or " ".join(["tforge", *sys.argv[1:2]])}
    os.ftruncate(fd, 0)
    os.pwrite(fd, (json.dumps(holder) + "\n").encode(), 0)
    _held[key] = fd


def unlock_run_dir(run_dir: Optional[PathLike] = None) -> None:
    """Release run_dir's lock (all locks this process holds when None). The lock
    file stays: removing it would let a waiting process lock an orphaned inode."""
    keys = list(_held) if run_dir is None else [str(Path(run_dir).resolve())]
    for key in keys:
        fd = _held.pop(key, None)
        if fd is not None:
            os.close(fd)  # closing the descriptor releases the flock


def held_locks() -> list[str]:
    return sorted(_held)


# ---------------------------------------------------------------- export manifests

def write_export_manifest(folder: PathLike, names: Iterable[str]) -> dict[str, Any]:
    """Hash folder/<name> for each name and write folder/manifest.json atomically (last)."""
    folder = Path(folder)
    files = {}
    for name in names:
        data = (folder / name).read_bytes()
        files[name] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    manifest = {"format": EXPORT_FORMAT, "version": EXPORT_VERSION, "files": files}
    write_text_atomic(folder / MANIFEST, json.dumps(manifest, indent=1) + "\n")
    return manifest


def _export_manifest(folder: Path) -> dict[str, Any]:
    path = folder / MANIFEST
    if not path.is_file():
        raise CheckpointError(f"export {folder}: {MANIFEST} is missing (an interrupted export, or one written "
                              f"before tforge checksummed exports); export the model again")
    try:
        manifest = json.loads(path.read_bytes())
    except (ValueError, UnicodeDecodeError) as e:
        raise CheckpointError(f"export {folder}: {MANIFEST} is not valid JSON ({e})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != EXPORT_FORMAT \
            or not isinstance(manifest.get("files"), dict):
        raise CheckpointError(f"export {folder}: {MANIFEST} is not a {EXPORT_FORMAT} manifest")
    return manifest


def read_verified_export(folder: PathLike, name: str) -> bytes:
    """The bytes of folder/<name>, checked against folder/manifest.json; CheckpointError when the
    manifest is missing, does not list the file, or the size or sha256 differ."""
    folder = Path(folder)
    entry = _export_manifest(folder)["files"].get(name)
    if not isinstance(entry, dict):
        raise CheckpointError(f"export {folder}: {name} is not listed in {MANIFEST}")
    path = folder / name
    if not path.is_file():
        raise CheckpointError(f"export {folder}: file {name} is missing")
    data = path.read_bytes()
    if len(data) != entry.get("bytes"):
        raise CheckpointError(f"export {folder}: file {name} has {len(data)} bytes but the manifest says "
                              f"{entry.get('bytes')} (truncated or partially written)")
    if hashlib.sha256(data).hexdigest() != entry.get("sha256"):
        raise CheckpointError(f"export {folder}: file {name} fails its sha256 check (modified or corrupted)")
    return data


__all__ = ["LOCK_FILE", "RunLockedError", "lock_run_dir", "unlock_run_dir", "held_locks", "write_export_manifest",
           "read_verified_export", "EXPORT_FORMAT"]
