"""The laptop run in docs/batch.md works as written: the ```sh block runs in a scratch folder with the
project's venv first on PATH, and prints the scored rows, the output's columns and _SUCCESS's count."""

from __future__ import annotations

from pathlib import Path

from support.docblocks import run_sh, sh_blocks

DOC = Path(__file__).resolve().parents[2] / "docs" / "batch.md"


def test_the_laptop_run_in_the_docs_works(tmp_path):
    (block,) = sh_blocks(DOC, "## A laptop run")
    done = run_sh(block, tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1] == "10000 ['txn_id', 'output'] 10000", done.stdout
    assert sorted(p.name for p in (tmp_path / "scores").glob("part-*")) == [f"part-00000{i}.parquet" for i in range(4)]
