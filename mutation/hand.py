"""Hand mutants, each applied alone: replace one exact snippet of a source file, run the
tests that should catch it, restore the file. Prints KILLED or SURVIVED per mutant and
exits 1 if any survived. The mutants are JSON lists of ``{"file", "old", "new",
"tests"}`` (``old`` must occur exactly once; ``tests``: pytest arguments).

    OMP_NUM_THREADS=1 .venv/bin/python mutation/hand.py mutation/hand/timeout_bound.json
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path


def main() -> int:
    survived = 0
    env = dict(os.environ, OMP_NUM_THREADS="1", MPLBACKEND="Agg", SPARSEROBUST_NO_DOWNLOAD="1")
    for spec in sys.argv[1:]:
        for m in json.loads(Path(spec).read_text()):
            path = Path(m["file"])
            src = path.read_text()
            if src.count(m["old"]) != 1:
                print(f"stale mutant (snippet not found exactly once): {m['old'][:60]!r}")
                return 2
            path.write_text(src.replace(m["old"], m["new"]))
            try:
                cmd = [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:logging",
                       *shlex.split(m["tests"])]  # fmt: skip
                rc = subprocess.run(cmd, env=env, capture_output=True).returncode
            finally:
                path.write_text(src)
            survived += rc == 0
            print("KILLED  " if rc else "SURVIVED", m["file"], repr(m["old"][:60]), flush=True)
    return 1 if survived else 0


if __name__ == "__main__":
    sys.exit(main())
