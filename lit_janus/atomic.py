"""Replacing a file or directory so that a crash at any moment leaves either the old one or the new one
under its name, never half of each (checkpoints, exports, pipeline results); and the ordinary permissions
for files a library wrote through a private temporary file."""

from __future__ import annotations

import os
import shutil
from pathlib import Path


def as_plain_files(paths) -> None:
    """Give `paths` the permissions a plain `open()` would (0o666 less the umask). safetensors 0.8 writes
    through a temporary file created 0600 and renames it (safetensors#782), so an export's weights would be
    readable by their owner only, beside a config.json that everyone on a shared disk can read."""
    umask = os.umask(0)
    os.umask(umask)
    for p in paths:
        os.chmod(p, 0o666 & ~umask)


def remove_path(path: Path) -> None:
    """Delete a file or a directory tree, if there."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def replace_dir(new: Path, dest: Path) -> None:
    """Give the finished `new` (a directory, or a file) the name `dest` (either, or nothing): the old `dest`
    moves aside before the new one takes its name, and goes only after, so `dest` is never half of one and
    half of the other."""
    old = dest.with_name(dest.name + ".old")
    remove_path(old)
    if dest.exists() or dest.is_symlink():
        os.replace(dest, old)
    os.replace(new, dest)
    try:
        remove_path(old)
    except OSError:
        pass


def recover_replaced(dest: Path) -> bool:
    """Finish a `replace_dir(partial, dest)` killed between its two renames: `dest` is missing, `dest.old`
    holds the previous checkpoint and the complete new one still has its temporary name. Returns whether
    anything was recovered."""
    old = dest.with_name(dest.name + ".old")
    if dest.exists() or dest.is_symlink() or not old.exists():
        return False
    partial = dest.with_name(f".{dest.name}.partial")
    # `replace_dir` only runs once the partial is whole, so with `dest` gone it is the newest checkpoint
    os.replace(partial if partial.exists() else old, dest)
    remove_path(old)
    return True
