"""The docs' ```sh blocks, found under a heading and run as written (the tests that keep docs honest).

``sh_blocks`` returns the blocks of the section under a heading (up to the next heading of
its level or above); ``run_sh`` runs one with bash ``-euo pipefail`` in a scratch folder, the
project's venv first on PATH (so ``kubeinfer-server`` and ``python3`` are the ones under test).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path


def sh_blocks(path: Path, heading: str) -> list[str]:
    level = len(heading) - len(heading.lstrip("#"))
    section = path.read_text().split(heading + "\n", 1)[1]
    section = re.split(rf"\n#{{1,{level}}} ", section, maxsplit=1)[0]
    return re.findall(r"```sh\n(.*?)```", section, re.S)


def run_sh(script: str, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    return subprocess.run(["bash", "-euo", "pipefail", "-c", script], capture_output=True, text=True,
                          timeout=timeout, cwd=cwd, env=env)
