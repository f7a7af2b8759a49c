"""Progress lines (images/s, ETA) and metric logs (JSONL + TensorBoard event files)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import jax
import numpy as np
from absl import logging


def _fmt_time(seconds: float) -> str:
    seconds = int(max(0, seconds))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


class Progress:
    """Throughput, ETA and input wait over a window of steps; prints one line per report.

    ``input_wait`` is the fraction of the window's wall time the loop spent blocked on its
    input iterators while no step was running (`add_input_wait`; the trainer counts a wait
    only when the step in flight had finished by its end): the device's idle share, near 0
    when the pipeline keeps ahead of the steps.
    """

    def __init__(
        self, total_steps: int, global_batch: int, first_step: int = 0, name: str = "train"
    ):
        self.total, self.batch, self.name = total_steps, global_batch, name
        self._t0, self._s0 = time.perf_counter(), first_step
        self._start = self._t0
        self._wait = 0.0
        self.input_wait = float("nan")  # Of the last window reported.

    def add_input_wait(self, seconds: float) -> None:
        self._wait += seconds

    def line(self, step: int, metrics: dict[str, float]) -> str:
        now = time.perf_counter()
        dt = max(now - self._t0, 1e-9)
        ips = (step - self._s0) * self.batch / dt
        eta = (self.total - step) * self.batch / ips if ips > 0 else float("nan")
        self.input_wait = min(1.0, self._wait / dt)
        self._t0, self._s0, self._wait = now, step, 0.0
        pct = 100.0 * step / max(self.total, 1)
        shown = " ".join(
            f"{k} {v:.4g}" for k, v in metrics.items() if k in ("loss", "lr", "train_accuracy")
        )
        return (
            f"{self.name} step {step}/{self.total} ({pct:.0f}%) {shown} | "
            f"{ips:.0f} img/s | input wait {100 * self.input_wait:.0f}% | "
            f"ETA {_fmt_time(eta) if np.isfinite(eta) else '?'}"
        )

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self._start


class MetricWriter:
    """Appends ``{"step": s, ...}`` lines to ``metrics.jsonl`` and scalars to TensorBoard.

    Only process 0 writes. TensorBoard events come from tensorboardX (no TensorFlow).
    """

    def __init__(
        self, workdir: str | os.PathLike, tensorboard: bool = True, resume_step: int = 0
    ):
        self._active = jax.process_index() == 0
        self._path = Path(workdir) / "metrics.jsonl"
        self._tb = None
        if self._active:
            self._path.parent.mkdir(parents=True, exist_ok=True)
            self._truncate_after(resume_step)
            if tensorboard:
                try:
                    from tensorboardX import SummaryWriter

                    self._tb = SummaryWriter(str(Path(workdir) / "tensorboard"))
                except ImportError:  # pragma: no cover
                    logging.warning("tensorboardX not installed: no TensorBoard events")

    def _truncate_after(self, step: int) -> None:
        """A resumed run repeats the steps after its checkpoint: drop their old lines, so
        ``metrics.jsonl`` holds each step once (as the resumed run computed it)."""
        if not self._path.exists():
            return
        lines = self._path.read_text(encoding="utf-8").splitlines(keepends=True)
        keep = []
        for line in lines:
            try:
                if json.loads(line).get("step", 0) <= step:
                    keep.append(line if line.endswith("\n") else line + "\n")
            except ValueError:  # A line cut by a crash.
                continue
        if len(keep) != len(lines):
            from hfrjax.fileio import write_text_atomic

            write_text_atomic(self._path, "".join(keep))

    def write(self, step: int, metrics: dict[str, Any]) -> None:
        if not self._active:
            return
        scalars = {
            k: float(np.asarray(v))
            for k, v in metrics.items()
            if np.ndim(v) == 0 and not isinstance(v, str)
        }
        with open(self._path, "a", encoding="utf-8") as f:
            f.write(json.dumps({"step": int(step), **scalars}) + "\n")
        if self._tb is not None:
            for k, v in scalars.items():
                self._tb.add_scalar(k, v, step)
            self._tb.flush()

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


def read_metrics(workdir: str | os.PathLike) -> list[dict[str, Any]]:
    path = Path(workdir) / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
