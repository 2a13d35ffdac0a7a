"""The worked example in docs/optimization.md works as written: the ```sh block runs in a scratch folder with
the project's venv first on PATH; the classifier's optimized model is accepted and written, the cnn's dynamic
quantization is rejected for speed (exit 3) and not written."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

DOC = Path(__file__).resolve().parents[2] / "docs" / "optimization.md"


def test_the_worked_example_in_the_docs_works(tmp_path):
    section = DOC.read_text().split("## A worked example\n", 1)[1].split("\n## ", 1)[0]
    (block,) = re.findall(r"```sh\n(.*?)```", section, re.S)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    done = subprocess.run(["bash", "-euo", "pipefail", "-c", block], capture_output=True, text=True, timeout=300,
                          cwd=tmp_path, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "accepted True True" in done.stdout.splitlines(), done.stdout
    assert done.stdout.strip().splitlines()[-1] == "exit 3", done.stdout
    assert "rejected: " in done.stdout and "under --min-speedup 1" in done.stdout
    assert (tmp_path / "data" / "classifier-int8.onnx").exists()
