"""The main job end to end at a tiny size, and its resume-instead-of-restart behaviour."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import hfrjax

REPO = Path(__file__).resolve().parents[1]


def _run(work):
    cmd = [
        sys.executable,
        str(REPO / "launch" / "quickstart.py"),
        f"--workdir={work}",
        "--preset=tiny",
        "--folds=2",
        "--pretrain_epochs=2",
        "--finetune_epochs=1",
        "--set_pretrain=input.batch_size=16",
        "--set_finetune=input.batch_size=8",
    ]
    out = subprocess.run(
        cmd, env=dict(os.environ, PYTHONPATH=str(REPO)), capture_output=True, text=True, timeout=600
    )
    assert out.returncode == 0, (out.stdout + out.stderr)[-4000:]
    return out.stdout


@pytest.mark.slow  # Two tiny quickstarts; CI also runs the full quickstart.
def test_quickstart_tiny_end_to_end_and_resume(tmp_path):
    first = _run(tmp_path)
    assert "zero-shot (VIS pretraining)" in first and "fine-tuned (MEC" in first
    results = json.loads((tmp_path / "results.json").read_text())
    for part in ("zero_shot", "fine_tuned"):
        assert [f["fold"] for f in results[part]["folds"]] == [1, 2]
        for name in ("TAR@FAR=1e-3", "TAR@FAR=1e-2", "Rank-1"):
            assert 0.0 <= results[part]["mean"][name] <= 1.0
    assert (tmp_path / "results.md").read_text().count("|") > 10
    # Reports with plots; the partial-face rows degrade probes only, so they differ.
    for d in ("report", "report_partial"):
        for name in ("eval.json", "eval.md", "roc.png", "cmc.png", "scores.png"):
            assert (tmp_path / d / name).stat().st_size > 0, (d, name)
    partial = results["partial_fold1"]
    assert [r["occlusion"] for r in partial.values()] == ["none", "maskTop", "maskBottom"]
    assert len({r["mean"]["AUC"] for r in partial.values()}) == 3
    assert (tmp_path / "pretrain" / "checkpoints").is_dir()
    # Where the wall time went, stage by stage, adding up to the run's total.
    timing = json.loads((tmp_path / "timing.json").read_text())
    stages = timing["stages_seconds"]
    assert list(stages) == [
        "startup", "data", "pretrain", "zero_shot_eval", "finetune_folds", "export_partial_reports"
    ]
    assert stages["pretrain"] > 0 and stages["finetune_folds"] > 0
    assert sum(stages.values()) == pytest.approx(timing["wall_seconds_this_run"], abs=0.5)
    embedder = hfrjax.load_embedder(tmp_path / "export")
    x = np.zeros((2, embedder.input_size, embedder.input_size, 3), np.uint8)
    assert embedder(x).shape[0] == 2
    # A second run resumes: nothing is trained again, the same numbers come out.
    second = _run(tmp_path)
    assert "synthetic data present" in second and "zero-shot evaluation present" in second
    assert "train step" not in second
    again = json.loads((tmp_path / "results.json").read_text())
    assert again["fine_tuned"]["mean"] == results["fine_tuned"]["mean"]



@pytest.mark.slow
def test_two_fresh_quickstarts_write_identical_results(tmp_path):
    """Same command, same seed, same machine: byte-identical results.json (timings live in
    timing.json) up to the workdir's own path, which the results name."""
    _run(tmp_path / "a")
    _run(tmp_path / "b")
    a = (tmp_path / "a" / "results.json").read_text().replace(str(tmp_path / "a"), "W")
    b = (tmp_path / "b" / "results.json").read_text().replace(str(tmp_path / "b"), "W")
    assert a == b
