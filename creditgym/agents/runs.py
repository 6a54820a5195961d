"""What every trainer's run directory holds: metrics.jsonl, TensorBoard events and an atomic checkpoint."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import sys
import threading
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

try:
    import fcntl
except ImportError:  # not POSIX: runs are not locked
    fcntl = None  # type: ignore[assignment]

import numpy as np
import torch
from torch import nn

from creditgym.agents.vec import NonFiniteError

RUN_FILES = ("config.json", "metrics.jsonl", "checkpoint.pt")
# What a run writes, so that an overwritten run leaves no stale checkpoints, curves or TensorBoard events behind.
_RUN_OUTPUTS = (*RUN_FILES, "metrics.jsonl.partial", "checkpoint-*.pt", "*.tmp", "events.out.tfevents.*",
                "learning_curve.png", "eval*.json")
LOCK_FILE = ".lock"


def _temporary(path: Path) -> Path:
    """A temporary name beside `path`, unique to this process, so that two writers never rename each other's file."""
    return path.with_name(f"{path.name}.{os.getpid()}.tmp")


@contextlib.contextmanager
def _replacing(path: Path, what: str) -> Iterator[Path]:
    """Yields a temporary file to write `path`'s new contents into; on success it is synced and renamed over `path`
    (a crash leaves the old file whole), on failure removed, and a write error names `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temporary(path)
    try:
        yield tmp
        with tmp.open("rb") as file:  # a rename is only as durable as the data behind it
            os.fsync(file.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        tmp.unlink(missing_ok=True)
        if isinstance(err, OSError | RuntimeError) and not isinstance(err, NotImplementedError):
            # torch.save reports a full disk as a RuntimeError, and an OSError from write() names no file
            reason = err.strerror if isinstance(err, OSError) and err.strerror else str(err).split("\n")[0]
            raise OSError(getattr(err, "errno", None) or 0,
                          f"cannot write {what} {path} ({reason}); the previous {path.name}, if any, is intact: "
                          "free space or fix the folder's permissions, then try again") from err
        raise


def write_text_atomically(path: Path, text: str, *, what: str = "file") -> Path:
    """`path.write_text(text)` that a crash or a concurrent reader never sees half-written."""
    with _replacing(path, what) as tmp:
        tmp.write_text(text)
    return path


def start_run_dir(run_dir: Path, *, overwrite: bool) -> None:
    """Create the folder of a fresh run, refusing one that holds an earlier run unless `overwrite` replaces it."""
    held = [name for name in RUN_FILES if (run_dir / name).exists()]
    if held and not overwrite:
        raise ValueError(f"{run_dir} already holds a run ({', '.join(held)}); to continue it pass --resume {run_dir}, "
                         "to keep it choose another --run-name, or to replace it pass --overwrite (overwrite=True)")
    if held:
        for pattern in _RUN_OUTPUTS:
            for path in run_dir.glob(pattern):
                path.unlink()
    run_dir.mkdir(parents=True, exist_ok=True)


def write_checkpoint(state: dict[str, Any], path: Path) -> Path:
    """torch.save through a temporary file, so a crash mid-write never leaves a truncated checkpoint, and a full
    disk raises an OSError that names the file and says the previous checkpoint is intact."""
    with _replacing(path, "checkpoint") as tmp:
        torch.save(state, tmp)
    return path


def keep_checkpoint(path: Path, step: int) -> Path:
    """A copy of the checkpoint at `path` beside it, named by `step`, that later checkpoints do not overwrite.

    A hard link where the filesystem has them: free, and the next checkpoint replaces `path`'s name, not its data.
    Either way it appears under its name only once complete."""
    kept = path.with_name(f"{path.stem}-{step}{path.suffix}")
    with _replacing(kept, "kept checkpoint") as tmp:
        try:
            os.link(path, tmp)
        except OSError:
            shutil.copyfile(path, tmp)
    return kept


def checkpoint_file(path: str | Path) -> Path:
    """The checkpoint a run folder or checkpoint path names, with an error that tells a missing path, a folder that
    is not a run and a run without a checkpoint apart (and lists the checkpoints it kept)."""
    path = Path(path)
    if not path.exists():
        kept = sorted(path.parent.glob("checkpoint*.pt")) if path.suffix == ".pt" and path.parent.is_dir() else []
        hint = f"; the checkpoints there: {', '.join(p.name for p in kept)}" if kept else ""
        raise FileNotFoundError(f"{path} does not exist; pass a run folder written by `creditgym train` or one of "
                                f"its checkpoint files{hint}")
    if not path.is_dir():
        return path
    if (path / "checkpoint.pt").exists():
        return path / "checkpoint.pt"
    kept = sorted(path.glob("checkpoint-*.pt"))
    if kept:
        raise FileNotFoundError(f"{path} has no checkpoint.pt, only the kept {', '.join(p.name for p in kept)}; "
                                "pass one of those")
    if (path / "config.json").exists():
        raise FileNotFoundError(f"{path} is a run that saved no checkpoint: it stopped before its first one (see "
                                "--checkpoint-every); train it again, with --overwrite to reuse its folder")
    raise FileNotFoundError(f"{path} is not a run folder (it has no checkpoint.pt or config.json); pass a folder "
                            "written by `creditgym train`")


def read_checkpoint(path: str | Path, device: torch.device, *, kind: str = "creditgym",
                    keys: tuple[str, ...] = ()) -> tuple[Path, dict[str, Any]]:
    """A run dir or a checkpoint.pt -> (the file, its contents on `device`).

    A file that torch cannot read, or that lacks "config" or any of `keys`, raises a ValueError naming the file.
    """
    path = checkpoint_file(path)
    locations: set[str] = set()

    def restore(storage: Any, location: str) -> Any:
        locations.add(location)  # where the run kept it, which moving it to `device` would hide
        return torch.serialization.default_restore_location(storage, str(device))

    try:
        state = torch.load(path, map_location=restore, weights_only=False)
    except Exception as err:  # unpickling can fail in any way; none of them leaves a usable checkpoint
        with path.open("rb") as file:
            zipped = file.read(4) == b"PK\x03\x04"  # torch.save writes a zip archive
        detail = f"{type(err).__name__}: {str(err).split('. ')[0]}"  # torch's own advice after the first sentence
        if zipped or path.stat().st_size == 0:
            raise ValueError(f"checkpoint {path} is truncated or damaged ({detail}); use another checkpoint of the "
                             "run (such as a kept checkpoint-<step>.pt) or start the run again") from None
        raise ValueError(f"{path} is not a checkpoint written by creditgym ({detail}); pass a run folder or a "
                         "checkpoint .pt written by creditgym train") from None
    missing = [key for key in ("config", *keys) if not isinstance(state, dict) or key not in state]
    if missing:
        raise ValueError(f"{path} is not a {kind} checkpoint: it holds no {', '.join(map(repr, missing))}; pass a "
                         f"checkpoint written by a {kind} run")
    if not isinstance(state["config"], dict):
        raise ValueError(f"checkpoint {path} is damaged: its 'config' is a {type(state['config']).__name__}, not a "
                         "mapping of config fields; use another checkpoint of the run (such as a kept "
                         "checkpoint-<step>.pt) or start the run again")
    # Checkpoints from before trainers saved their device: the device their tensors were on.
    state.setdefault("device", next((where for where in sorted(locations) if where != "cpu"), "cpu"))
    return path, state


def device_change(path: Path, state: dict[str, Any], device: torch.device, **at: int) -> dict[str, Any] | None:
    """None when the checkpoint at `path` (read by `read_checkpoint`) was saved on `device`'s kind of device, where
    its random generators restore exactly; else warn that the resume is not bit-exact and return the record of the
    move, with where the run was (`at`, e.g. update=8) for the run's `device_changes`."""
    saved = torch.device(state["device"])
    if saved.type == device.type:
        return None
    where = ", ".join(f"{name} {value}" for name, value in at.items())
    warnings.warn(f"resuming {path} on {device}, but it was saved on {saved}: the weights, optimiser and env state "
                  f"carry over, but the {saved.type} random generators cannot be restored on {device.type}, so they "
                  f"are re-seeded from the run's seed and where it stopped ({where}), and {device.type} kernels round "
                  f"differently. The run continues, but is not bit-exact: it will not match the run continued on "
                  f"{saved}. Its config.json records this under device_changes", stacklevel=3)
    return {"from": str(saved), "to": str(device), **at}


def reseeded(device: torch.device, seed: int, step: int, stream: str) -> torch.Generator:
    """A generator on `device` seeded from the run's seed, the step a resume starts at and its `stream` (such as
    "actions"): after a move to another device, where the saved generators cannot be restored, these seeds keep the
    resume repeatable and the streams apart."""
    generator = torch.Generator(device=device)
    generator.manual_seed(int(np.random.SeedSequence([seed, step, *stream.encode()]).generate_state(1, np.uint64)[0]))
    return generator


def load_weights(module: nn.Module, weights: dict[str, torch.Tensor], path: Path, *, hint: str = "",
                 strict: bool = True) -> None:
    """`module.load_state_dict(weights)`, but a checkpoint of another network raises a ValueError that names the
    file and the first parameter that does not fit, with both shapes, instead of torch's RuntimeError. Weights
    that are not finite are refused too: the trainers never save them, so the file is damaged, and a policy with
    NaN weights would otherwise play (and evaluate) as a constant policy without any error."""
    damaged = (f"checkpoint {path} is damaged: {{}}; use another checkpoint of the run (such as a kept "
               "checkpoint-<step>.pt) or start the run again")
    if not isinstance(weights, dict) or not all(isinstance(value, torch.Tensor) for value in weights.values()):
        raise ValueError(damaged.format("its weights are not a mapping of parameter names to tensors"))
    for name, value in weights.items():
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise ValueError(damaged.format(f"{name} holds NaN or infinite values"))
    own = module.state_dict()
    problems = [f"{name} is missing" for name in own if strict and name not in weights]
    problems += [f"{name} is not in this network" for name in weights if name not in own]
    problems += [f"{name} has shape {list(value.shape)} there but {list(own[name].shape)} here"
                 for name, value in weights.items() if name in own and value.shape != own[name].shape]
    if problems:
        raise ValueError(f"checkpoint {path} was made for a different network or env: {problems[0]}"
                         f"{f' (and {len(problems) - 1} more)' if len(problems) > 1 else ''}{hint}")
    module.load_state_dict(weights, strict=strict)


def trim_metrics(run_dir: Path, key: str, last: float) -> None:
    """Drop the metrics.jsonl rows whose `key` is past `last`: a resumed run logs those updates again.

    A line that is not JSON (cut short by a crash mid-write) is moved to metrics.jsonl.partial with a warning, as
    trajectory files do: the resumed run's rows would otherwise be appended after it, and the file stay broken.
    """
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return
    kept, cut = [], []
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            if line.strip():
                cut.append(line)
            continue
        if isinstance(row, dict) and isinstance(row.get(key), int | float) and row[key] > last:
            continue
        kept.append(line)
    if cut:
        with open(f"{path}.partial", "a") as aside:
            aside.write("".join(line + "\n" for line in cut))
        lines = "a line" if len(cut) == 1 else f"{len(cut)} lines"
        warnings.warn(f"{path} held {lines} cut short (a crash mid-write): moved to {path}.partial; the resumed run "
                      "appends after the complete rows", stacklevel=3)
    write_text_atomically(path, "".join(line + "\n" for line in kept), what="metrics file")


def outcome_text(metrics: dict[str, float], *, digits: int = 1) -> str | None:
    """What the episodes that finished in an update achieved, for progress bars and summaries: the success rate, or
    on an env without a success signal (CartPole) the episodes and their mean return; None when none finished."""
    if "charts/success_rate" in metrics:
        return f"success {metrics['charts/success_rate']:.{digits}%}"
    if metrics.get("charts/episodes") and "charts/episodic_return" in metrics:
        return (f"{metrics['charts/episodes']:,.0f} episodes, mean return "
                f"{metrics['charts/episodic_return']:.3g}")
    return None


class StopRequested(KeyboardInterrupt):
    """A training run stopped by a signal after saving its last completed update; `signum` is the signal, so that
    the process can exit with 128 + signum (130 for Ctrl-C, 143 for SIGTERM), as a shell expects."""

    def __init__(self, signum: int = signal.SIGINT) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


# The signals that stop a run after its current update: Ctrl-C, and what cluster schedulers (SLURM and Kubernetes
# preemption), `timeout`, `docker stop` and a closed terminal send. Each only while it has its default handler.
_STOP_SIGNALS = {signal.SIGINT: signal.default_int_handler,
                 **{getattr(signal, name): signal.SIG_DFL for name in ("SIGTERM", "SIGHUP") if hasattr(signal, name)}}


class StopAfterUpdate:
    """Ctrl-C, SIGTERM or SIGHUP inside this block asks the training loop to stop after its current update, where
    the state is consistent and a checkpoint resumes exactly; a second signal stops at once, without saving.

    Only default handlers are replaced, and only in the main thread (where signals arrive).
    """

    def __init__(self, unit: str = "update") -> None:
        self.unit = unit
        self.requested = False
        self.signum: int = signal.SIGINT
        self.previous: dict[int, Any] = {}

    def __enter__(self) -> StopAfterUpdate:
        if threading.current_thread() is threading.main_thread():
            for signum, default in _STOP_SIGNALS.items():
                if signal.getsignal(signum) is default:
                    self.previous[signum] = signal.signal(signum, self.request)
        return self

    def request(self, signum: int = signal.SIGINT, frame: Any = None) -> None:
        self.requested, self.signum = True, signum
        self._restore()
        name = "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name
        print(f"\n{name}: stopping after this {self.unit} to save a checkpoint ({name} again stops at once, "
              "without saving it)", file=sys.stderr, flush=True)

    def _restore(self) -> None:
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)
        self.previous = {}

    def __exit__(self, *exc: object) -> None:
        self._restore()


class RunLock:
    """Holds `run_dir/.lock` for one training process: a second `train` or `--resume` of the same run would rewrite
    metrics.jsonl under the first (whose later rows were lost) and rename checkpoints over its. The OS drops the
    lock when the process dies, so a killed run never stays locked. No lock where fcntl is missing (not POSIX)."""

    def __init__(self, run_dir: Path) -> None:
        self.path = run_dir / LOCK_FILE
        self.file: IO[str] | None = None

    def __enter__(self) -> RunLock:
        if fcntl is None:
            return self
        self.path.parent.mkdir(parents=True, exist_ok=True)
        file = self.path.open("a+")
        try:
            fcntl.flock(file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            file.seek(0)
            holder = file.read().strip() or "another process"
            file.close()
            raise ValueError(f"{self.path.parent} is being trained by {holder} now; wait for it to finish or stop it "
                             "(Ctrl-C saves it), then resume, or give this run another --run-name") from None
        file.seek(0)
        file.truncate()
        file.write(f"process {os.getpid()}")
        file.flush()
        self.file = file
        return self

    def __exit__(self, *exc: object) -> None:
        if self.file is not None:
            self.file.close()  # closing releases the lock
            self.file = None


def training_stopped(step: str, run_dir: Path, saved: str | None, what: str, fix: str) -> NonFiniteError:
    """The error both trainers raise when `step` (e.g. "PPO update 5") produced a non-finite number: where it was
    first, what to change, and what the run's checkpoint still holds (`saved`, e.g. "update 4", or None)."""
    kept = (f"{run_dir / 'checkpoint.pt'} still holds {saved}, the last good state" if saved is not None
            else "no checkpoint of this run was saved before it")
    return NonFiniteError(f"{step} produced a non-finite number, first in {what}; {fix}. Training stopped before "
                          f"using it: {kept}. Start the run again with the change (--overwrite reuses its folder)")


def train_in_run_dir(run_dir: Path, *, fresh: bool, overwrite: bool, tensorboard: bool, record: dict[str, Any],
                     resumed_at: tuple[str, float], global_step: int, progress: Any, unit: str,
                     loop: Callable[[MetricsLogger, StopAfterUpdate], dict[str, float]],
                     save: Callable[[], Any]) -> dict[str, float]:
    """What both trainers' `learn()` do around their loop: lock the run folder against a second trainer, claim
    (fresh) or reopen (resumed) it, write config.json, run `loop(logger, ctrl_c)`, save a checkpoint, and raise
    `StopRequested` after a Ctrl-C (or SIGTERM, SIGHUP) stop.

    `resumed_at` is the metrics key and the checkpoint's value of it: a resumed run logs the rows past it again.
    """
    with RunLock(run_dir):
        if fresh:
            start_run_dir(run_dir, overwrite=overwrite)
        else:
            run_dir.mkdir(parents=True, exist_ok=True)
            trim_metrics(run_dir, *resumed_at)
        write_text_atomically(run_dir / "config.json", json.dumps(record, indent=2), what="run record")
        logger = MetricsLogger(run_dir, tensorboard, fresh=fresh, global_step=global_step)
        with StopAfterUpdate(unit) as ctrl_c:
            try:
                metrics = loop(logger, ctrl_c)
            finally:  # also on errors and a second signal, where nothing is saved: the state is mid-update
                progress.close()
                logger.close()
            interrupted, signum = ctrl_c.requested, ctrl_c.signum
            save()
    if interrupted:
        raise StopRequested(signum)
    return metrics


class MetricsLogger:
    """Writes one JSON row per update to metrics.jsonl, and the same scalars to TensorBoard.

    A fresh run starts a new metrics.jsonl; a resumed run appends to it, and TensorBoard hides the events that a
    resumed run logs again (those past `global_step`).
    """

    def __init__(self, run_dir: Path, tensorboard: bool, *, fresh: bool = False, global_step: int = 0) -> None:
        self.file = (run_dir / "metrics.jsonl").open("w" if fresh else "a")
        self.writer = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(run_dir), purge_step=None if fresh else global_step + 1)

    def log(self, metrics: dict[str, float]) -> None:
        try:
            self.file.write(json.dumps(metrics) + "\n")
            self.file.flush()
        except OSError as err:  # write() names no file; the checkpoint is what a resume needs
            raise OSError(err.errno, f"cannot append to {self.file.name} ({err.strerror}); the run's last "
                          "checkpoint is intact: free space, then resume it") from err
        if self.writer is not None:
            for name, value in metrics.items():
                if name != "global_step":
                    self.writer.add_scalar(name, value, int(metrics["global_step"]))

    def close(self) -> None:
        self.file.close()
        if self.writer is not None:
            self.writer.close()
