"""What every trainer's run directory holds: metrics.jsonl, TensorBoard events and an atomic checkpoint."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch


def write_checkpoint(state: dict[str, Any], path: Path) -> Path:
    """torch.save through a temporary file, so a crash mid-write never leaves a truncated checkpoint."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)
    return path


def keep_checkpoint(path: Path, step: int) -> Path:
    """A copy of the checkpoint at `path` beside it, named by `step`, that later checkpoints do not overwrite."""
    kept = path.with_name(f"{path.stem}-{step}{path.suffix}")
    shutil.copyfile(path, kept)
    return kept


def read_checkpoint(path: str | Path, device: torch.device) -> tuple[Path, dict[str, Any]]:
    """A run dir or a checkpoint.pt -> (the file, its contents on `device`)."""
    path = Path(path)
    if path.is_dir():
        path = path / "checkpoint.pt"
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint at {path}; pass a run dir or a checkpoint.pt from a run")
    return path, torch.load(path, map_location=device, weights_only=False)


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
