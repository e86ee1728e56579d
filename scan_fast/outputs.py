"""Where a command may write a file: never onto one of its inputs, never onto a folder, and over an
existing file only when asked; plus the temporary names files are written under before the rename.

Checked before any work starts, so a bad `--out` costs nothing. Imports nothing of scan_fast.
"""
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable


def check_output(target, inputs: Iterable = (), overwrite: bool = True, flag: str = "--out") -> Path:
    """`target` as a Path, or a ValueError naming `flag` and the problem.

    inputs: files the command reads (the target may be none of them); overwrite=False refuses an
    existing file.
    """
    shown = os.fspath(target)  # as the user wrote it: Path drops a trailing slash
    target = Path(target)
    if shown.endswith(os.sep) or target.is_dir():
        raise ValueError(f"{flag} {shown} is a folder; give the path of the file to write")
    resolved = target.resolve()
    for source in inputs:
        if source is None:
            continue
        source = Path(source)
        if resolved == source.resolve():
            raise ValueError(f"{flag} {target} is also an input of this command; it would be replaced")
    if target.exists() and not overwrite:
        raise ValueError(f"{flag} {target} already exists; pass --overwrite to replace it")
    if target.parent.exists() and not target.parent.is_dir():
        raise ValueError(f"{flag} {target}: {target.parent} is a file, not a folder")
    return target


def default_file_mode() -> int:
    """The mode a new file gets from open() under this process's umask: for a file made by mkstemp (mode 0600)
    before it is renamed into place."""
    mask = os.umask(0o022)  # reading the umask means setting it: put it back at once
    os.umask(mask)
    return 0o666 & ~mask


def partial_path(target, pid: int = None) -> Path:
    """The temporary name a file is written under before it is renamed onto `target`."""
    target = Path(target)
    return target.with_name(f".{target.name}.partial-{os.getpid() if pid is None else pid}")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


_SWEPT_FOLDERS = set()  # folders whose stale partials a running `partials_swept` block removed


def _stale_partial(name: str, prefix: str = ".") -> bool:
    """Whether `name` is a temporary file (partial_path) under `prefix` whose writer process is gone."""
    if not name.startswith(prefix):
        return False
    stem, sep, pid = name.rpartition(".partial-")
    return bool(sep) and stem.startswith(".") and pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid))


def remove_stale_partials(target) -> list:
    """Delete temporary files of `target` left by writers that were killed (their process is gone): one listing
    of its folder, none inside a `partials_swept` block of that folder."""
    target = Path(target)
    if not target.parent.is_dir() or os.path.abspath(target.parent) in _SWEPT_FOLDERS:
        return []
    removed = [target.parent / entry.name for entry in os.scandir(target.parent)
               if _stale_partial(entry.name, f".{target.name}.partial-")]
    for path in removed:
        path.unlink(missing_ok=True)
    return removed


@contextmanager
def partials_swept(folder):
    """Remove every stale temporary file in `folder` once, then run the block without a listing per file
    written: a command that writes thousands of files into one folder (the parts of a conversion, the files
    of an index) would otherwise list the growing folder for each (quadratic in the parts)."""
    folder = os.path.abspath(folder)
    if os.path.isdir(folder):
        for entry in os.scandir(folder):
            if _stale_partial(entry.name):
                Path(entry.path).unlink(missing_ok=True)
    outer = folder in _SWEPT_FOLDERS
    _SWEPT_FOLDERS.add(folder)
    try:
        yield
    finally:
        if not outer:
            _SWEPT_FOLDERS.discard(folder)
