"""A compiler wrapper that compiles Verilator's runtime library once and reuses the objects.

Every Verilator build compiles the same runtime sources (``verilated.cpp``,
``verilated_vpi.cpp``, ...) with the same flags: about 90 % of a small design's
build time. Verilator's makefiles prefix every compile with ``$(OBJCACHE)``;
:func:`binforge.sim.cocotb_runner.build_design` points it at this script, which
keeps those objects in a folder keyed by a hash of the compiler command and the
source's bytes. The design's own sources are always compiled.

Usage (as make runs it): ``python verilator_objcache.py CACHE_DIR CXX ARGS...``.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

__all__ = ["main"]

#: Only Verilator's own runtime sources are cached; they never include design headers.
RUNTIME_PREFIX = "verilated"


def _runtime_source(args: list[str]) -> Path | None:
    sources = [a for a in args if a.endswith(".cpp")]
    if "-c" not in args or len(sources) != 1:
        return None
    src = Path(sources[0])
    return src if src.name.startswith(RUNTIME_PREFIX) and src.is_absolute() else None


def main(argv: list[str]) -> int:
    cache, command = Path(argv[0]), argv[1:]
    src = _runtime_source(command)
    if src is None or "-o" not in command:
        return subprocess.call(command)
    out = Path(command[command.index("-o") + 1])
    dep = out.with_suffix(".d")
    h = hashlib.sha256("\0".join(command).encode())
    h.update(src.read_bytes())
    key = h.hexdigest()[:24]
    cached_obj, cached_dep = cache / f"{key}.o", cache / f"{key}.d"
    if cached_obj.is_file() and cached_dep.is_file():
        shutil.copyfile(cached_obj, out)
        shutil.copyfile(cached_dep, dep)
        return 0
    status = subprocess.call(command)
    if status == 0 and out.is_file() and dep.is_file():
        cache.mkdir(parents=True, exist_ok=True)
        for have, want in ((dep, cached_dep), (out, cached_obj)):  # object last: it marks completion
            tmp = want.with_name(f".{want.name}.{os.getpid()}")
            shutil.copyfile(have, tmp)
            os.replace(tmp, want)
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
