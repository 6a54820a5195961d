"""More hostile reward programs against the sandbox: attacks found by an audit beyond the corpus in
test_llm_reward_sandbox.py. Each test names the attack and the layer that must contain it.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from creditgym.wrappers.llm_reward import RewardSandbox, SandboxLimits, validate_program

from .sandbox_programs import CPU_BOUND, FAST, GADGET, HEAD

REPO = Path(__file__).resolve().parents[2]
BATCH = [({"on_target": 0}, 0, {"on_target": 1}), ({"on_target": 1}, 2, {"on_target": 1})]
GOOD = HEAD + "    return float(next_state['on_target']), {'x': 1.0}\n"


def escape(box: RewardSandbox, payload: str) -> str:
    assert box.load(GADGET + payload) is None
    result = box.evaluate(BATCH[:1])
    assert not result.ok and "gadget not found" not in result.error, result.error
    return result.error


# -- validated programs -----------------------------------------------------------------------------------------
@pytest.mark.parametrize(("program", "expected"), [
    # Loops inside one C call never reach the interpreter's eval loop; RLIMIT_CPU's SIGXCPU still ends them.
    (HEAD + "    return float(sum(range(10**12))), {}\n", "CPU time limit exceeded"),
    (HEAD + "    return float(pow(10, 10**9) % 7), {}\n", "CPU time limit exceeded"),
    ("X = sum(range(10**12))\n" + HEAD + "    return 0.0, {}\n", "while loading: CPU time limit exceeded"),
    # Hashing a deeply nested tuple recurses in C without a depth check and overflows the worker's stack.
    (HEAD + "    t = ()\n    for i in range(10**6):\n        t = (t,)\n    return float(hash(t) % 2), {}\n",
     "segmentation fault"),
    (HEAD + "    return float(len(f'{1:>{10**9}}')), {}\n", "MemoryError"),
    (HEAD + "    print(*range(10**7))\n    return 0.0, {}\n", "MemoryError"),
])
def test_c_level_bombs_are_contained(program: str, expected: str) -> None:
    assert validate_program(program) == []
    with RewardSandbox(limits=CPU_BOUND) as box:
        error = box.load(program) or box.evaluate(BATCH).error
        assert error is not None and expected in error, error
        assert box.load(GOOD) is None and box.evaluate(BATCH).rewards == [1.0, 1.0]


@pytest.mark.parametrize("name", ["\ud800", "a\nb", "tab\t", "\x00", "\u200b"])
def test_component_names_must_be_printable(name: str) -> None:
    # A newline, NUL or lone surrogate in a name would forge lines in logs and feedback, or fail to encode.
    program = HEAD + f"    return 0.0, {{{name!r}: 1.0}}\n"
    assert validate_program(program) == []
    with RewardSandbox(limits=FAST) as box:
        assert box.load(program) is None
        error = box.evaluate(BATCH).error
        assert error is not None and "printable characters" in error, error


def test_control_characters_in_log_and_error_come_back_escaped() -> None:
    # Raw, a program's text could forge lines in the designer's output and in the feedback prompt, which lists each
    # error on one line, or send terminal escape sequences (ESC) to whoever reads the output.
    printed, message = "\x1b[2Jfake\r\nline\tend", "bad\n- forged error\x1b[31m\r\u202e"
    program = HEAD + f"    print({printed!r})\n    raise ValueError({message!r})\n"
    assert validate_program(program) == []
    with RewardSandbox(limits=FAST) as box:
        assert box.load(program) is None
        result = box.evaluate(BATCH)
    assert result.log == "\\x1b[2Jfake\\r\nline\tend\n"
    assert result.error == r"transition 0: line 3: ValueError: bad\n- forged error\x1b[31m\r\u202e"


def test_an_error_of_many_lines_stays_one_bounded_line() -> None:
    program = HEAD + "    raise ValueError('a\\n' * 10**6)\n"
    with RewardSandbox(limits=FAST) as box:
        assert box.load(program) is None
        error = box.evaluate(BATCH).error
    assert error.startswith(r"transition 0: line 2: ValueError: a\na\n") and error.isprintable(), error[:100]
    assert len(error) <= FAST.max_error_chars + 200 + len("... [truncated]")
    assert error.endswith("... [truncated]")


def test_lone_surrogates_in_log_and_error_come_back_encodable() -> None:
    program = HEAD + "    print(chr(0xd800) + 'log')\n    raise ValueError(chr(0xdfff) + 'err')\n"
    with RewardSandbox(limits=FAST) as box:
        assert box.load(program) is None
        result = box.evaluate(BATCH)
        assert result.error.endswith("ValueError: ?err"), result.error
        assert result.log == "?log\n"
        # Every text the caller stores or shows encodes as UTF-8.
        for text in (result.error, result.log, box.error):
            text.encode("utf-8")
        json.dumps({"error": result.error}, ensure_ascii=False).encode("utf-8")
    program = "def fail():\n    raise ValueError(chr(0xdc00))\n\nX = fail()\n" + HEAD + "    return 0.0, {}\n"
    assert validate_program(program) == []
    with RewardSandbox(limits=FAST) as box:
        assert box.load(program) == "while loading: line 2: ValueError: ?"


def test_parent_with_more_than_1024_descriptors() -> None:
    # select() rejects descriptors ≥ 1024; a training process with many files open must still use the sandbox.
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 1200:
        pytest.skip(f"RLIMIT_NOFILE is {soft}; the test needs 1200 descriptors")
    fds = [os.open(os.devnull, os.O_RDONLY) for _ in range(1100)]
    try:
        with RewardSandbox(limits=FAST) as box:
            assert box.load(GOOD) is None
            assert box.evaluate(BATCH).rewards == [1.0, 1.0]
    finally:
        for fd in fds:
            os.close(fd)


# -- escaped code: the process-level layers --------------------------------------------------------------------
def test_a_reply_nested_too_deep_is_a_malformed_reply(unvalidated: RewardSandbox) -> None:
    # The worker's protocol pipe is fd 4; a frame of 100k '[' makes the parent's json.loads recurse too deep.
    body = 100_000
    error = escape(unvalidated, f"    os['write'](4, ({body}).to_bytes(4, 'big') + b'[' * {body})\n"
                                "    os['read'](3, 1)\n")
    assert error == "batch of 1 transitions: the worker sent a malformed reply"


def test_wall_time_limit_covers_sending_a_request_the_worker_does_not_read() -> None:
    # A forged reply frame makes the parent send the next batch to a worker that blocks without CPU and never reads;
    # a request larger than the pipe buffer (64 KiB) then blocked the parent's write for ever.
    limits = SandboxLimits(cpu_seconds=1, wall_seconds=1.5, memory_bytes=256 << 20)
    forge = ("    body = b'{\"rewards\":[7.0],\"components\":{},\"log\":\"\"}'\n"
             "    os['write'](4, len(body).to_bytes(4, 'big') + body)\n"
             "    os['sys'].modules['select'].select([], [], [], 10**6)\n")
    with RewardSandbox(limits=limits, validate=False) as box:
        assert box.load(GADGET + forge) is None
        assert box.evaluate(BATCH[:1]).rewards == [7.0]
        worker_group = box._process.pid
        # Without the limit, end the hung write after 10 s so the test fails instead of hanging.
        rescue = threading.Timer(10, os.killpg, (worker_group, signal.SIGKILL))
        rescue.start()
        start = time.monotonic()
        try:
            result = box.evaluate([({"board": "#" * (1 << 20)}, 0, {})])
        finally:
            rescue.cancel()
        assert time.monotonic() - start < limits.wall_seconds + 2
        assert result.error == "batch of 1 transitions: wall time limit exceeded (1.5 s); worker killed"
        deadline = time.monotonic() + 5
        while live_processes_in_group(worker_group) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert live_processes_in_group(worker_group) == []
        # The parent stays healthy: the next program runs.
        assert box.load(GOOD) is None and box.evaluate(BATCH).rewards == [1.0, 1.0]


def test_escaped_code_cannot_read_host_files(unvalidated: RewardSandbox) -> None:
    # Closing stderr frees a descriptor under RLIMIT_NOFILE; the chroot is what keeps world-readable files away.
    if not unvalidated.layers["chroot"]:
        pytest.skip("no chroot possible here (neither root nor a user namespace)")
    for target in ("/etc/passwd", str(REPO / "pyproject.toml")):
        error = escape(unvalidated, f"    os['close'](2)\n    fd = os['open']({target!r}, 0)\n"
                                    "    raise RuntimeError(os['read'](fd, 100))\n")
        assert "FileNotFoundError" in error or "PermissionError" in error, error


@pytest.fixture
def public_dir() -> Iterator[Path]:
    """A world-writable, sticky dir like /tmp, in the system temp dir."""
    directory = Path(tempfile.mkdtemp(prefix="creditgym-public-"))
    directory.chmod(0o1777)
    if not os.stat(directory.parent).st_mode & stat.S_IXOTH:
        pytest.skip(f"{directory.parent} is not searchable by other users")
    yield directory
    for child in directory.iterdir():
        child.rmdir() if child.is_dir() and not child.is_symlink() else child.unlink()
    directory.rmdir()


def test_escaped_code_cannot_create_entries_in_world_writable_dirs(unvalidated: RewardSandbox,
                                                                   public_dir: Path) -> None:
    # mkdir, symlink and mkfifo need no descriptor and no file size, so only the chroot stops them in /tmp.
    if not unvalidated.layers["chroot"]:
        pytest.skip("no chroot possible here (neither root nor a user namespace)")
    for call in (f"os['mkdir']({str(public_dir / 'd')!r})", f"os['symlink']('/', {str(public_dir / 'l')!r})",
                 f"os['mkfifo']({str(public_dir / 'f')!r})"):
        error = escape(unvalidated, f"    {call}\n    return 0.0, {{}}\n")
        assert "FileNotFoundError" in error or "PermissionError" in error, error
    assert list(public_dir.iterdir()) == []


def test_escaped_code_cannot_leave_its_chroot(unvalidated: RewardSandbox) -> None:
    if not unvalidated.layers["chroot"]:
        pytest.skip("no chroot possible here (neither root nor a user namespace)")
    error = escape(unvalidated, "    os['chroot']('.')\n    return 0.0, {}\n")
    assert "PermissionError" in error, error


@pytest.mark.skipif(os.geteuid() != 0, reason="only a root parent can give each worker its own uid")
def test_workers_cannot_signal_each_other() -> None:
    # Two workers that shared a uid (nobody) could kill or ptrace each other: kill(-1) reached every one.
    with RewardSandbox(limits=FAST) as victim, RewardSandbox(limits=FAST, validate=False) as attacker:
        assert victim.load(GOOD) is None and victim.evaluate(BATCH).ok
        assert victim.layers["uid"] != attacker.layers["uid"]
        assert attacker.load(GADGET + "    os['kill'](-1, 9)\n    return 0.0, {}\n") is None
        attacker.evaluate(BATCH)
        victim_result = victim.evaluate(BATCH)
        assert victim_result.ok, victim_result.error


def test_escaped_code_cannot_gain_privileges_by_exec(unvalidated: RewardSandbox) -> None:
    assert unvalidated.layers["no_new_privs"]
    assert unvalidated.layers["uid"] != 0


# -- the parent's own process ---------------------------------------------------------------------------------
# Run as root, this drops the parent script to nobody once its imports are done. The worker needs an interpreter
# nobody may run, and this venv's may sit under root's home.
BECOME_UNPRIVILEGED = """
import os, shutil, sys
if os.geteuid() == 0:
    os.setgroups([])
    os.setresgid(65534, 65534, 65534)
    os.setresuid(65534, 65534, 65534)
    if not os.access(sys.executable, os.X_OK):
        sys.executable = shutil.which("python3") or sys.executable
"""


def test_escaped_code_cannot_signal_an_unprivileged_parent() -> None:
    # An unprivileged parent shares the worker's uid, so only the worker's PID namespace keeps the parent out of
    # its reach: without it, kill(parent) and kill(-1) both killed the parent.
    script = f"""
from creditgym.wrappers.llm_reward import RewardSandbox, SandboxLimits
{BECOME_UNPRIVILEGED}
limits = SandboxLimits(cpu_seconds=1, wall_seconds=10.0, memory_bytes=256 << 20)
gadget = {GADGET!r}
with RewardSandbox(limits=limits, validate=False) as box:
    print('uid', os.getuid(), 'pid namespace', box.layers.get('pid_namespace'), flush=True)
    for target in (os.getpid(), -1):
        assert box.load(gadget + f"    os['kill']({{target}}, 9)\\n    return 0.0, {{{{}}}}\\n") is None
        print(box.evaluate([(0, 0, 1)]).error, flush=True)
print('parent alive')
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, cwd="/",
                            env={"HOME": "/tmp", "PATH": os.defpath})
    if "pid namespace False" in result.stdout:
        pytest.skip("no PID namespace here (neither root nor a user namespace)")
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("uid 65534 ") or os.geteuid() != 0, lines
    assert lines[-1] == "parent alive"
    assert all("ProcessLookupError" in line for line in lines[1:3]), lines


def live_processes_in_group(group: int) -> list[int]:
    """Pids of the group's processes that are neither gone nor zombies."""
    pids = []
    for stat_file in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat_file.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == group and fields[0] != "Z":
            pids.append(int(stat_file.parent.name))
    return pids


def test_sandbox_dies_with_its_parent() -> None:
    # The parent dies while its fork-inherited copy of the request pipe lives on in a child, so the worker never
    # reads end-of-file; before the watchdog it waited for that child for ever.
    script = f"""
import os, time
from creditgym.wrappers.llm_reward import RewardSandbox
box = RewardSandbox()
assert box.load({GOOD!r}) is None and box.evaluate([({{"on_target": 0}}, 0, {{"on_target": 1}})]).ok
if os.fork() == 0:
    time.sleep(30)
    os._exit(0)
print(box._process.pid, flush=True)
os._exit(0)
"""
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True,
                              start_new_session=True)
    try:
        sandbox_group = int(parent.stdout.readline())
        parent.wait(timeout=30)
        deadline = time.monotonic() + 10
        while live_processes_in_group(sandbox_group) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert live_processes_in_group(sandbox_group) == []
    finally:
        os.killpg(parent.pid, signal.SIGKILL)  # the sleeping child
        parent.stdout.close()


@pytest.mark.parametrize("unprivileged", [False, True], ids=["as the caller", "unprivileged"])
def test_temp_dir_is_removed_when_the_parent_is_killed(unprivileged: bool, public_dir: Path) -> None:
    # SIGKILL gives the parent no chance to delete the temp dir, so the watchdog does; the dir is in a public,
    # sticky dir so that an unprivileged parent can make it.
    script = f"""
import os, signal
from creditgym.wrappers.llm_reward import RewardSandbox
{BECOME_UNPRIVILEGED if unprivileged else ""}
box = RewardSandbox()
assert box.load({GOOD!r}) is None
print(box._directory, flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, cwd="/",
                            env={"HOME": "/tmp", "PATH": os.defpath, "TMPDIR": str(public_dir)})
    assert result.returncode == -signal.SIGKILL, result.stdout + result.stderr
    directory = Path(result.stdout.strip())
    assert directory.parent == public_dir
    deadline = time.monotonic() + 10
    while directory.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not directory.exists()
