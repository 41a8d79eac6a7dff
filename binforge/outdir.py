"""Output folders that appear whole or not at all, and their ``report.json``."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = ["atomic_output_dir", "write_json_atomic", "write_report"]


@contextlib.contextmanager
def atomic_output_dir(path: str | os.PathLike, *, overwrite: bool = True) -> Iterator[Path]:
    """Yield a temporary folder beside ``path``; on success it replaces ``path``.

    On any exception the temporary folder is removed and ``path`` is left as it
    was, so a failed command never leaves a half-written output folder.
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if final.exists():
        if not overwrite:
            shutil.rmtree(tmp, ignore_errors=True)
            raise FileExistsError(final)
        old = final.with_name(f".{final.name}.old-{os.getpid()}")
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, final)


def write_json_atomic(path: str | os.PathLike, data: Any) -> None:
    """Write ``data`` as indented json through a temporary file and a rename."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=False, default=_jsonable) + "\n")
    os.replace(tmp, path)


def write_report(folder: str | os.PathLike, command: str, **figures: Any) -> Path:
    """Write ``folder/report.json``: what ran (``command``) and its figures."""
    path = Path(folder) / "report.json"
    write_json_atomic(path, {"command": command, **figures})
    return path


def _jsonable(value: Any) -> Any:
    # numpy scalars and arrays, paths
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    raise TypeError(f"cannot write {type(value).__name__} to json")
