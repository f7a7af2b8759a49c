"""launch/benchmark_train.py runs both modes and reports what the README's table needs."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("in_turn", [False, True])
def test_benchmark_train_rows(tmp_path, in_turn):
    out = tmp_path / "rows.json"
    args = [
        sys.executable, str(ROOT / "launch" / "benchmark_train.py"), "--models=small",
        "--batch_sizes=4", "--steps=1", "--rounds=2", "--warmup=0", "--num_classes=10",
        f"--json={out}", f"--in_turn={in_turn}",
    ]  # fmt: skip
    p = subprocess.run(args, capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert p.returncode == 0, p.stderr[-2000:]
    (row,) = json.loads(out.read_text())["rows"]
    assert row["in_turn"] is in_turn and len(row["jax_step_s_rounds"]) == 2
    assert row["jax_step_s"] == min(row["jax_step_s_rounds"]) > 0
    assert row["peak_rss_gib"] > 0
    if in_turn:
        assert 0 < row["peak_rss_gib_after_jax"] <= row["peak_rss_gib"]
    try:
        import torch  # noqa: F401
    except ImportError:
        return
    assert row["jax_over_torch_step_time"] == pytest.approx(
        row["jax_step_s"] / row["torch_step_s"]
    )
    assert "| small | 4 | float32 |" in p.stdout
