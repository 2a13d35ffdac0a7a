"""The worked example in docs/optimization.md works as written: the ```sh block runs in a scratch folder with
the project's venv first on PATH; the classifier's optimized model is accepted and written, the cnn's dynamic
quantization is rejected for speed (exit 3) and not written."""

from __future__ import annotations

from pathlib import Path

from support.docblocks import run_sh, sh_blocks

DOC = Path(__file__).resolve().parents[2] / "docs" / "optimization.md"


def test_the_worked_example_in_the_docs_works(tmp_path):
    (block,) = sh_blocks(DOC, "## A worked example")
    done = run_sh(block, tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "accepted True True" in done.stdout.splitlines(), done.stdout
    assert done.stdout.strip().splitlines()[-1] == "exit 3", done.stdout
    assert "rejected: " in done.stdout and "under --min-speedup 1" in done.stdout
    assert (tmp_path / "data" / "classifier-int8.onnx").exists()
