"""Run logging shared by the trainers: metrics.jsonl and TensorBoard events in the run directory."""

from __future__ import annotations

import json
from pathlib import Path


class MetricsLogger:
    """Writes one JSON row per update to metrics.jsonl, and the same scalars to TensorBoard.

    A fresh run truncates an old metrics.jsonl left in the same folder; a resumed run appends to it.
    """

    def __init__(self, run_dir: Path, tensorboard: bool, *, fresh: bool = False) -> None:
        self.file = (run_dir / "metrics.jsonl").open("w" if fresh else "a")
        self.writer = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(run_dir))

    def log(self, metrics: dict[str, float]) -> None:
        self.file.write(json.dumps(metrics) + "\n")
        self.file.flush()
        if self.writer is not None:
            for name, value in metrics.items():
                if name != "global_step":
                    self.writer.add_scalar(name, value, int(metrics["global_step"]))

    def close(self) -> None:
        self.file.close()
        if self.writer is not None:
            self.writer.close()
