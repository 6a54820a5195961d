"""A sandbox for untrusted reward programs: one persistent worker process per program, fed batches.

Layers, outermost first (`RewardSandbox.layers` reports which ones the current worker got; `_worker.py` describes
its processes):

1. Static validation (`validate.py`): AST allow-list, size limits. Rejected programs never reach a process.
2. A separate process (`_worker.py`, run as `python -s -P -S -B`, so no site-packages and no creditgym import),
   in its own session, with an empty environment apart from TMPDIR/HOME pointing at a fresh temp dir,
   which is also its working directory and is deleted when the worker stops.
3. Kernel limits set inside the worker before any program is read: RLIMIT_CPU per request (SIGXCPU kills
   it), RLIMIT_AS (allocations fail with MemoryError), RLIMIT_FSIZE = 0 (writing to any file kills it),
   RLIMIT_NOFILE = the descriptors it already has (no new files, sockets or pipes), RLIMIT_CORE = 0 and
   RLIMIT_NPROC = 0 (binds only once privileges are dropped; the kernel exempts root).
4. Namespaces: a fresh network namespace via `unshare(CLONE_NEWNET)` (as root) or a user + network namespace
   (unprivileged, where the kernel allows it). Where neither works, only layers 1, 3 (no new sockets) and 5
   keep the program off the network. With them comes a fresh PID namespace, where the program runs as pid 2
   and sees no process outside: it cannot signal or ptrace the parent even when it shares the parent's uid.
   A watchdog process outside that namespace kills the worker when the parent dies, and deletes its temp dir.
5. Files: the worker chroots into its empty temp dir (as root, or inside its user namespace, where it then
   drops every capability), so no host file, dir or /tmp is reachable. When started as root it then drops to
   uid = gid = 0x70000000 + its pid, unique per worker, so it owns no file and cannot signal or ptrace another
   worker or any host process. PR_SET_NO_NEW_PRIVS stops set-user-ID binaries from regaining privileges.
6. A restricted namespace: `__builtins__` holds only pure builtins, `__import__` returns `math` and nothing
   else, and `print` writes to a capped buffer returned with the result.
7. The parent enforces the wall-time limit on sending each request and on its reply (kills the process
   group), caps the reply size, re-checks every returned number and escapes control characters in the text
   that comes back.

Failures are data: a program that is rejected, raises, returns the wrong thing, exceeds a limit or kills its
worker is disqualified, and every later `evaluate` returns the recorded error. Loading the next program
starts a fresh worker.
"""

from __future__ import annotations

import json
import math
import os
import select
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from creditgym.wrappers.llm_reward.validate import ValidationLimits, validate_program

Transition = tuple[Any, Any, Any]
"""(state, action, next_state) as plain JSON data: dicts with str keys, lists, str, numbers, bools, None."""

_WORKER = Path(__file__).with_name("_worker.py")
_HEADER = struct.Struct(">I")
# -I less -E, so that PYTHONHASHSEED (in the otherwise empty environment the worker gets) is read: with a fixed
# one, a program that iterates over a set or calls hash() gives the same rewards in every worker. -P (3.11+) keeps
# this file's folder off sys.path; it holds no module named like the standard library's.
_ISOLATED = ("-s", "-S", "-B", *(("-P",) if sys.version_info >= (3, 11) else ()))
_STARTUP_SECONDS = 30.0
_BYTES_PER_NUMBER = 32  # generous upper bound on one JSON float plus separator


@dataclass(frozen=True)
class SandboxLimits:
    """Limits applied to every program; `cpu_seconds` and `wall_seconds` apply to each load and each batch."""

    cpu_seconds: int = 5
    """CPU time per request, in whole seconds (the kernel's RLIMIT_CPU granularity)."""
    wall_seconds: float = 20.0
    """Wall time per request, enforced by the parent; keep it above cpu_seconds on a loaded machine."""
    memory_bytes: int = 1 << 30
    """Address-space limit of the worker process (RLIMIT_AS)."""
    max_components: int = 32
    """Most distinct component names in one batch."""
    max_name_chars: int = 64
    """Longest component name."""
    max_log_chars: int = 4_096
    """Printed output kept per request; the rest is dropped and marked as truncated."""
    max_error_chars: int = 1_000
    """Longest exception message kept in an error."""

    def __post_init__(self) -> None:
        if self.cpu_seconds < 1:
            raise ValueError(f"cpu_seconds must be a whole number ≥ 1, got {self.cpu_seconds}")
        if not self.wall_seconds > 0:
            raise ValueError(f"wall_seconds must be positive, got {self.wall_seconds}")
        if self.memory_bytes < 64 << 20:
            raise ValueError(f"memory_bytes must be at least 64 MiB for the interpreter, got {self.memory_bytes}")
        for name in ("max_components", "max_name_chars", "max_log_chars", "max_error_chars"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be ≥ 1, got {getattr(self, name)}")


@dataclass(frozen=True)
class SandboxResult:
    """Rewards for a batch, or the error that disqualified the program (then `rewards` is empty).

    `components[name][i]` is the value transition i returned for `name`, and 0.0 where it returned none. The
    program's text comes back with control characters escaped (ESC as `\\x1b`): all of them in `error`, which is
    one line, and all but newlines and tabs in `log`.
    """

    rewards: list[float]
    components: dict[str, list[float]] = field(default_factory=dict)
    error: str | None = None
    log: str = ""

    @property
    def ok(self) -> bool:
        """Whether the batch was evaluated."""
        return self.error is None


class _WorkerFailed(Exception):
    """The worker died, timed out or broke the protocol; the message is the program's recorded error."""


class RewardSandbox:
    """Evaluates one untrusted `compute_dense_reward(state, action, next_state) -> (float, dict)` at a time.

    `validate=False` skips the static check; it exists to test the process-level layers on their own.

    >>> program = "def compute_dense_reward(state, action, next_state):\\n    return next_state - state, {'d': 1.0}"
    >>> with RewardSandbox() as sandbox:
    ...     sandbox.load(program) is None
    ...     sandbox.evaluate([(0, 0, 2), (2, 1, 3)]).rewards
    True
    [2.0, 1.0]
    """

    def __init__(self, *, limits: SandboxLimits | None = None, validation: ValidationLimits | None = None,
                 validate: bool = True) -> None:
        self.limits = limits or SandboxLimits()
        self.validation = validation or ValidationLimits()
        self.validate = validate
        self.error: str | None = None
        """Why the current program is disqualified, or None."""
        self._process: subprocess.Popen[bytes] | None = None
        self._directory: str | None = None
        self._layers: dict[str, Any] = {}
        self._loaded = False

    @property
    def layers(self) -> dict[str, Any]:
        """Which process-level layers the worker got: network and PID namespaces, chroot, uid, NPROC, limits (starts
        one)."""
        if self._process is None:
            self._start()
        return dict(self._layers)

    def load(self, program: str) -> str | None:
        """Makes `program` current in a fresh worker; returns why it was rejected or failed, or None."""
        self._stop()
        self._loaded, self.error = True, None
        if self.validate:
            problems = validate_program(program, self.validation)
            if problems:
                self.error = "rejected by static validation: " + "; ".join(problems)
                return self.error
        try:
            self._start()
            reply = self._request({"op": "load", "source": program}, max_bytes=1 << 16)
        except _WorkerFailed as failure:
            return self._disqualify(f"while loading: {failure}")
        if "error" in reply:
            return self._disqualify(_text(reply["error"]))
        return None

    def evaluate(self, transitions: Sequence[Transition]) -> SandboxResult:
        """Runs the current program on each (state, action, next_state); errors come back in the result."""
        if not self._loaded:
            raise RuntimeError("no program loaded; call load(program) first")
        if self.error is not None:
            return SandboxResult(rewards=[], error=self.error)
        transitions = list(transitions)
        if not transitions:
            return SandboxResult(rewards=[])
        n = len(transitions)
        max_bytes = (1 << 20) + n * _BYTES_PER_NUMBER * (1 + self.limits.max_components)
        try:
            reply = self._request({"op": "eval", "transitions": transitions}, max_bytes=max_bytes)
            # Printed output is made of lines, unlike an error, which the designer shows and lists on one line.
            log = _text(reply.get("log", ""), keep="\n\t")[: self.limits.max_log_chars + 32]
            if "error" in reply:
                return SandboxResult(rewards=[], error=self._disqualify(_text(reply["error"])), log=log)
            rewards, components = self._check_reply(reply, n)
        except _WorkerFailed as failure:
            return SandboxResult(rewards=[], error=self._disqualify(f"batch of {n} transitions: {failure}"))
        return SandboxResult(rewards=rewards, components=components, log=log)

    def close(self) -> None:
        """Stops the worker and deletes its temp dir."""
        self._stop()

    def __enter__(self) -> RewardSandbox:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __del__(self) -> None:
        self._stop()

    # -- internals ----------------------------------------------------------------------------------------
    def _disqualify(self, error: str) -> str:
        self._stop()
        error = _text(error)
        limit = self.limits.max_error_chars + 200  # room for the context around the program's message
        self.error = error if len(error) <= limit else error[:limit] + "... [truncated]"
        return self.error

    def _start(self) -> None:
        self._directory = tempfile.mkdtemp(prefix="creditgym-sandbox-")
        config = {key: value for key, value in asdict(self.limits).items() if key != "wall_seconds"}
        config.update(parent_pid=os.getpid(), directory=self._directory)
        self._process = subprocess.Popen(
            [sys.executable, *_ISOLATED, str(_WORKER), json.dumps(config)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, cwd=self._directory,
            env={"TMPDIR": self._directory, "HOME": self._directory, "PATH": os.defpath, "LC_ALL": "C.UTF-8",
                 "PYTHONHASHSEED": "0"},
            close_fds=True, start_new_session=True,
        )
        assert self._process.stdin is not None
        os.set_blocking(self._process.stdin.fileno(), False)  # so that _write can keep to the wall-time limit
        try:
            handshake = self._receive(time.monotonic() + _STARTUP_SECONDS, max_bytes=1 << 16)
        except _WorkerFailed as failure:
            self._stop()
            raise _WorkerFailed(f"sandbox worker failed to start: {failure}") from None
        self._layers = handshake.get("layers", {})

    def _stop(self) -> None:
        process, self._process = self._process, None
        if process is not None:
            if process.poll() is None:
                try:
                    os.killpg(process.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            process.wait()
            for stream in (process.stdin, process.stdout):
                if stream is not None:
                    stream.close()
        directory, self._directory = self._directory, None
        if directory is not None:
            shutil.rmtree(directory, ignore_errors=True)

    def _request(self, message: dict[str, Any], *, max_bytes: int) -> dict[str, Any]:
        try:
            body = json.dumps(message, allow_nan=True, separators=(",", ":"), default=_plain).encode()
        except (TypeError, ValueError) as error:
            raise TypeError(f"transitions must be plain JSON data (dicts, lists, str, numbers): {error}") from None
        deadline = time.monotonic() + self.limits.wall_seconds
        self._write(_HEADER.pack(len(body)) + body, deadline)
        return self._receive(deadline, max_bytes=max_bytes)

    def _write(self, data: bytes, deadline: float) -> None:
        # The request pipe is non-blocking (see _start): a worker that stops reading while a request larger than the
        # pipe buffer is still going in must run into the wall-time limit, not block the parent for ever.
        assert self._process is not None and self._process.stdin is not None
        fd = self._process.stdin.fileno()
        view = memoryview(data)
        while view:
            try:
                view = view[os.write(fd, view):]
            except BlockingIOError:  # the pipe is full: wait for the worker to read, up to the deadline
                poller = select.poll()
                poller.register(fd, select.POLLOUT)
                timeout = deadline - time.monotonic()
                if timeout <= 0 or not poller.poll(math.ceil(timeout * 1000)):
                    raise self._wall_time_exceeded() from None
            except OSError:  # BrokenPipeError: the worker is gone
                raise _WorkerFailed(self._death()) from None

    def _receive(self, deadline: float, *, max_bytes: int) -> dict[str, Any]:
        header = self._read(_HEADER.size, deadline)
        size = _HEADER.unpack(header)[0]
        if size > max_bytes:
            raise _WorkerFailed(f"output too large ({size} bytes; the limit for this request is {max_bytes})")
        try:
            reply = json.loads(self._read(size, deadline))
        except (ValueError, RecursionError):  # RecursionError: a reply nested too deep to decode
            raise _WorkerFailed("the worker sent a malformed reply") from None
        if not isinstance(reply, dict):
            raise _WorkerFailed("the worker sent a malformed reply")
        return reply

    def _read(self, size: int, deadline: float) -> bytes:
        assert self._process is not None and self._process.stdout is not None
        fd = self._process.stdout.fileno()
        # poll, not select: select rejects descriptors above 1023, which a busy parent's pipes can reach.
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        chunks, remaining = [], size
        while remaining:
            timeout = deadline - time.monotonic()
            if timeout <= 0 or not poller.poll(math.ceil(timeout * 1000)):
                raise self._wall_time_exceeded()
            chunk = os.read(fd, min(remaining, 1 << 20))
            if not chunk:
                raise _WorkerFailed(self._death())
            chunks.append(chunk)
            remaining -= len(chunk)
        return b"".join(chunks)

    def _wall_time_exceeded(self) -> _WorkerFailed:
        # Every caller stops the worker's process group on _WorkerFailed (_disqualify, or _start's own _stop).
        return _WorkerFailed(f"wall time limit exceeded ({self.limits.wall_seconds:g} s); worker killed")

    def _death(self) -> str:
        assert self._process is not None
        try:
            code = self._process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            return "the worker stopped answering"
        reasons = {
            -signal.SIGXCPU: f"CPU time limit exceeded ({self.limits.cpu_seconds} s); worker killed",
            -signal.SIGXFSZ: "tried to write to a file (the file size limit is 0); worker killed",
            -signal.SIGKILL: "worker killed by SIGKILL (out of memory?)",
            -signal.SIGSEGV: "worker crashed (segmentation fault)",
        }
        if code in reasons:
            return reasons[code]
        return f"worker died with signal {signal.Signals(-code).name}" if code < 0 else f"worker exited ({code})"

    def _check_reply(self, reply: dict[str, Any], n: int) -> tuple[list[float], dict[str, list[float]]]:
        # The worker runs untrusted code, so its reply is checked as untrusted input too.
        rewards, components = reply.get("rewards"), reply.get("components")
        if not _finite_floats(rewards, n) or not isinstance(components, dict):
            raise _WorkerFailed("the worker sent a malformed reply")
        if len(components) > self.limits.max_components:
            raise _WorkerFailed(f"more than {self.limits.max_components} distinct components")
        for name, values in components.items():
            if (not 0 < len(name) <= self.limits.max_name_chars or not name.isprintable()
                    or not _finite_floats(values, n)):
                raise _WorkerFailed("the worker sent a malformed reply")
        return rewards, components


def _finite_floats(values: object, n: int) -> bool:
    return (type(values) is list and len(values) == n
            and all(type(x) is float and math.isfinite(x) for x in values))


def _text(value: object, *, keep: str = "") -> str:
    """The worker's text, safe to print and to put in a prompt: it encodes to UTF-8 (lone surrogates, from
    chr(0xD800), become '?'), and every other unprintable character not in `keep` is written as its escape
    (\\x1b, \\r, \\n, \\u202e), so that a program cannot send terminal escape sequences or forge lines in the
    designer's output and in the feedback prompt, which lists each error on one line."""
    text = (value if type(value) is str else str(value)).encode("utf-8", "replace").decode("utf-8")
    if text.isprintable():
        return text
    return "".join(char if char.isprintable() or char in keep else char.encode("unicode_escape").decode("ascii")
                   for char in text)


def _plain(value: Any) -> Any:
    """Turns numpy scalars and arrays into JSON data; anything else is a caller error."""
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not plain data")
