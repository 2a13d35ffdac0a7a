"""The worked example in docs/sizing.md works as written: the ```sh block runs in a scratch folder with the
project's venv first on PATH, tune exits 0, and the report's choice meets the bound, its pod's CPU is the
chosen configuration's and its replicas are the ceiling of the target rate over the chosen throughput."""

from __future__ import annotations

from pathlib import Path

from support.docblocks import run_sh, sh_blocks

DOC = Path(__file__).resolve().parents[2] / "docs" / "sizing.md"


def test_the_worked_example_in_the_docs_works(tmp_path):
    (block,) = sh_blocks(DOC, "## Measuring with kubeinfer-server tune")
    done = run_sh(block, tmp_path, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1] == "True True True", done.stdout
    assert "Chosen: highest throughput per CPU with p99 <= 50 ms" in done.stdout
    assert (tmp_path / "tune.json").exists()
