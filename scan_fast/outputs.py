"""Where a command may write a file: never onto one of its inputs, never onto a folder, and over an
existing file only when asked; plus the temporary names files are written under before the rename.

Checked before any work starts, so a bad `--out` costs nothing. Imports nothing of scan_fast.
"""
import os
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


def remove_stale_partials(target) -> list:
    """Delete temporary files of `target` left by writers that were killed (their process is gone)."""
    target = Path(target)
    removed = []
    if not target.parent.is_dir():
        return removed
    prefix = f".{target.name}.partial-"
    for path in target.parent.iterdir():
        if path.name.startswith(prefix):
            pid = path.name[len(prefix):]
            if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
                path.unlink(missing_ok=True)
                removed.append(path)
    return removed
