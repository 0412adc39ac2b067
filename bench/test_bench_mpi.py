"""Smoke check of bench/mpi_allreduce.py: a tiny data-parallel run on 1 and 2 ranks, table and JSON.
Skipped without mpi4py or mpiexec. No assertion depends on time.

    python -m pytest bench/test_bench_mpi.py -q
"""
from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
import mpi_allreduce  # noqa: E402

pytestmark = pytest.mark.skipif(importlib.util.find_spec("mpi4py") is None or mpi_allreduce.mpiexec() is None,
                                reason="needs mpi4py and mpiexec (pip install 'rnncore[mpi]')")


def test_mpi_allreduce_smoke(tmp_path, capsys):
    out = tmp_path / "mpi.json"
    assert mpi_allreduce.main(["--ranks", "1", "2", "--hidden", "16", "--batch", "4", "--seq-len", "8",
                               "--steps", "4", "--warmup", "2", "--max-chars", "20000", "--bare-repeat", "3",
                               "--timeout", "120", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "CPU:" in text and "ISA:" in text and "threads/rank" in text
    rows = json.loads(out.read_text())["rows"]
    assert [r["ranks"] for r in rows] == [1, 2]
    assert rows[0]["allreduce_s"] == 0.0 and rows[1]["allreduce_s"] > 0.0
    assert all(r["step_s"] > 0 and r["steps_timed"] == 2 and r["threads_per_rank"] >= 1 for r in rows)
