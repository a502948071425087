"""Rank-0 metrics: a progress bar (loss, tokens/s, ETA), a jsonl log and TensorBoard.

Every rank creates a :class:`MetricsLogger`; on ranks other than 0 every method is a no-op,
so the training loop never branches on the rank to log.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

from tqdm import tqdm


class Throughput:
    """Running rates over the steps since construction (or the last :meth:`reset`)."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.t0 = time.perf_counter()
        self.tokens = self.examples = self.frames = self.steps = 0
        self.data_s = self.compute_s = 0.0

    def add(self, tokens: int, examples: int, frames: int, data_s: float, compute_s: float) -> None:
        self.tokens += tokens
        self.examples += examples
        self.frames += frames
        self.data_s += data_s
        self.compute_s += compute_s
        self.steps += 1

    def rates(self) -> dict[str, float]:
        wall = max(time.perf_counter() - self.t0, 1e-9)
        return {"tokens_per_s": self.tokens / wall, "samples_per_s": self.examples / wall,
                "frames_per_s": self.frames / wall, "step_time_s": wall / max(self.steps, 1),
                "data_wait_frac": self.data_s / wall}


class MetricsLogger:
    """Progress bar + ``metrics.jsonl`` + TensorBoard, on rank 0 only.

    Args:
        run_dir: where metrics.jsonl and tb/ go.
        enabled: True on rank 0.
        total_steps: the run's last step (for the bar and the ETA).
        start_step: steps already done (a resumed run).
        progress_bar, jsonl, tensorboard: which outputs.
    """

    def __init__(self, run_dir: str | Path, enabled: bool, total_steps: int, start_step: int = 0,
                 progress_bar: bool = True, jsonl: bool = True, tensorboard: bool = True) -> None:
        self.enabled = enabled
        self.bar = self.tb = self.jsonl = None
        if not enabled:
            return
        run_dir = Path(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        if jsonl:
            self.jsonl = open(run_dir / "metrics.jsonl", "a", buffering=1)
        if tensorboard:
            # tensorboard is optional (the "report" extra); only a run that writes events needs it
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(log_dir=str(run_dir / "tb"))
        if progress_bar:
            self.bar = tqdm(total=total_steps, initial=start_step, unit="step", dynamic_ncols=True,
                            desc="train", mininterval=1.0)

    def step(self, step: int, loss: float, tokens_per_s: float) -> None:
        """Advance the bar by one step (every step)."""
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(loss=f"{loss:.4f}", tok_s=f"{tokens_per_s:,.0f}", refresh=False)

    def log(self, step: int, values: dict[str, Any]) -> None:
        """Write one record (every ``logging.every_steps`` steps)."""
        if not self.enabled:
            return
        record = {"step": step, "time": time.time(), **values}
        if self.jsonl is not None:
            self.jsonl.write(json.dumps(record) + "\n")
        if self.tb is not None:
            for key, v in values.items():
                if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
                    self.tb.add_scalar(f"train/{key}", v, step)

    def message(self, text: str) -> None:
        """A line above the bar (rank 0)."""
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.write(text)
        else:
            print(text, flush=True)

    def close(self) -> None:
        for h in (self.bar, self.jsonl, self.tb):
            if h is not None:
                h.close()
        self.bar = self.tb = self.jsonl = None


def read_metrics(path: str | Path) -> list[dict]:
    """The records of a metrics.jsonl (for tests and reports)."""
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
