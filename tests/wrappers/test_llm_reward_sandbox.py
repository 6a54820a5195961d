"""The reward-program sandbox against a corpus of hostile programs (issue 9, "Sandbox (security)").

Every hostile program must be rejected statically or contained at run time with a recorded error, and nothing
outside the sandbox's temp dir may change: a sentinel dir in tmp_path and the repository are checked.
"""

from __future__ import annotations

import errno
import hashlib
import os
import socket
from collections.abc import Iterator
from pathlib import Path

import gymnasium as gym
import pytest

import creditgym  # noqa: F401  (registers the envs)
from creditgym.wrappers.llm_reward import (
    LLMCodeReward,
    RewardSandbox,
    SandboxLimits,
    ValidationLimits,
    validate_program,
)

from .sandbox_programs import FAST, GADGET, HEAD

REPO = Path(__file__).resolve().parents[2]

GOOD = """import math

def distance(a, b):
    return abs(a[0] - b[0]) + abs(a[1] - b[1])

def compute_dense_reward(state, action, next_state):
    progress = next_state["on_target"] - state["on_target"]
    components = {"progress": float(progress), "step": -0.1}
    if action == 2:
        components["bonus"] = math.sqrt(4.0)
    return progress - 0.1 + components.get("bonus", 0.0), components
"""
BATCH = [({"on_target": 0}, 0, {"on_target": 1}), ({"on_target": 1}, 2, {"on_target": 1}),
         ({"on_target": 1}, 1, {"on_target": 0})]


def snapshot(root: Path) -> dict[str, str]:
    """Path -> content hash of every file under root (names only for the repository's top level)."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for p in sorted(root.rglob("*"))}


@pytest.fixture
def sentinel(tmp_path: Path) -> Iterator[Path]:
    """A dir outside the sandbox holding one file; the test fails if anything in it changes."""
    directory = tmp_path / "sentinel"
    directory.mkdir()
    (directory / "keep.txt").write_text("untouched")
    before = snapshot(directory)
    repo_before = sorted(os.listdir(REPO))
    yield directory
    assert snapshot(directory) == before
    assert sorted(os.listdir(REPO)) == repo_before


@pytest.fixture(scope="module")
def sandbox() -> Iterator[RewardSandbox]:
    with RewardSandbox(limits=FAST) as box:
        yield box


def test_good_program_gives_expected_rewards_and_components(sandbox: RewardSandbox) -> None:
    assert sandbox.load(GOOD) is None
    result = sandbox.evaluate(BATCH)
    assert result.ok, result.error
    assert result.rewards == pytest.approx([0.9, 1.9, -1.1])
    assert result.components == {"progress": [1.0, 0.0, -1.0], "step": [-0.1, -0.1, -0.1], "bonus": [0.0, 2.0, 0.0]}
    # The worker persists between batches of the same program.
    assert sandbox.evaluate(BATCH[::-1]).rewards == pytest.approx([-1.1, 1.9, 0.9])


def test_numpy_values_are_accepted_as_plain_data(sandbox: RewardSandbox) -> None:
    np = pytest.importorskip("numpy")
    assert sandbox.load(HEAD + "    return float(sum(next_state['xs'])) + action, {}\n") is None
    result = sandbox.evaluate([({"xs": []}, np.int64(2), {"xs": np.array([1, 2])})])
    assert result.rewards == [5.0]


# -- rejected before any process runs ----------------------------------------------------------------------
STATIC = {
    "import os": ("import os\n" + HEAD + "    os.system('touch x')\n    return 0.0, {}\n", "import of 'os'"),
    "from subprocess": ("from subprocess import run\n" + HEAD + "    return 0.0, {}\n", "'subprocess'"),
    "import inside function": (HEAD + "    import subprocess\n    return 0.0, {}\n", "'subprocess'"),
    "open": (HEAD + "    open('/tmp/x', 'w').write('x')\n    return 0.0, {}\n", "'open' is not allowed"),
    "__import__": (HEAD + "    __import__('os').system('id')\n    return 0.0, {}\n", "'__import__'"),
    "__subclasses__": (HEAD + "    ().__class__.__base__.__subclasses__()\n    return 0.0, {}\n", "'__class__'"),
    "getattr dunder": (HEAD + "    getattr(compute_dense_reward, '__globals__')\n    return 0.0, {}\n",
                       "'getattr' is not allowed"),
    "dunder string": (HEAD + "    x = '__globals__'\n    return 0.0, {}\n", "containing '__'"),
    "format attribute trick": (HEAD + "    s = '{0.' + '_' * 2 + 'class' + '_' * 2 + '}'\n"
                               "    return 0.0, {s.format(state): 0.0}\n", "'format' is not allowed"),
    "generator frame": (HEAD + "    g = (x for x in [1])\n    g.gi_frame.f_globals\n    return 0.0, {}\n",
                        "'gi_frame'"),
    "exec": (HEAD + "    exec('import os')\n    return 0.0, {}\n", "'exec' is not allowed"),
    "eval": (HEAD + "    return eval('1.0'), {}\n", "'eval' is not allowed"),
    "globals": (HEAD + "    globals()\n    return 0.0, {}\n", "'globals' is not allowed"),
    "type": (HEAD + "    type(state).mro()\n    return 0.0, {}\n", "'type' is not allowed"),
    "class": ("class A:\n    pass\n" + HEAD + "    return 0.0, {}\n", "ClassDef is not allowed"),
    "global": (HEAD + "    global x\n    return 0.0, {}\n", "Global is not allowed"),
    "with": (HEAD + "    with state:\n        pass\n    return 0.0, {}\n", "With is not allowed"),
    "top-level loop": ("while True:\n    pass\n" + HEAD + "    return 0.0, {}\n", "top level"),
    "no entry point": ("def reward(s, a, n):\n    return 0.0, {}\n", "must define compute_dense_reward"),
    "wrong arity": ("def compute_dense_reward(state):\n    return 0.0, {}\n", "three positional arguments"),
    "syntax error": (HEAD + "    return 0.0, {\n", "syntax error"),
    "too long": (HEAD + "    return 0.0, {}\n" + "# padding\n" * 3000, "characters long"),
    "huge literal": (HEAD + f"    return 0.0, {{'{'x' * 2000}': 1.0}}\n", "string literal of 2000"),
}


@pytest.mark.parametrize("name", list(STATIC))
def test_hostile_program_is_rejected_statically(name: str, sentinel: Path) -> None:
    program, expected = STATIC[name]
    errors = validate_program(program)
    assert any(expected in error for error in errors), errors
    with RewardSandbox(limits=FAST) as box:
        error = box.load(program)
        assert error is not None and error.startswith("rejected by static validation") and expected in error
        result = box.evaluate(BATCH)
        assert not result.ok and result.error == error and result.rewards == []


def test_validation_reports_line_numbers_and_limits() -> None:
    assert validate_program(GOOD) == []
    assert validate_program("import math\n\n" + HEAD + "    import os\n    return 0.0, {}\n") == [
        "line 4: import of 'os' is not allowed (only math)"]
    deep = HEAD + "    return 0.0, {'a': " + "[" * 80 + "]" * 80 + "}\n"
    assert validate_program(deep, ValidationLimits(max_depth=40)) == ["program nests deeper than 40 levels"]
    many = HEAD + "    return sum([" + ", ".join(["1"] * 2000) + "]), {}\n"
    assert validate_program(many, ValidationLimits(max_nodes=1000)) == [
        "program has 2015 syntax nodes; the limit is 1000"]
    # Too deep for the parser itself: still a message, not a crash.
    chain = HEAD + "    return " + " + ".join(["1.0"] * 3000) + ", {}\n"
    assert validate_program(chain)[0].startswith("syntax error: maximum recursion depth")


# -- pass validation, contained at run time ----------------------------------------------------------------
RUNTIME = {
    "while True": (HEAD + "    while True:\n        pass\n", "time limit exceeded"),
    "list memory bomb": (HEAD + "    x = [0] * 10**10\n    return 0.0, {}\n", "MemoryError"),
    "str memory bomb": (HEAD + "    x = 'x' * 10**10\n    return 0.0, {}\n", "MemoryError"),
    "growing memory bomb": (HEAD + "    x = []\n    while True:\n        x.append([0] * 10**6)\n", "MemoryError"),
    "recursion bomb": ("def f(n):\n    return f(n + 1)\n\n" + HEAD + "    return f(0), {}\n",
                       "line 2: RecursionError"),
    "exception": (HEAD + "    return 1.0 / 0, {}\n", "line 2: ZeroDivisionError: float division by zero"),
    "key error": (HEAD + "    return state['missing'], {}\n", "KeyError: 'missing'"),
    "huge exception message": (HEAD + "    raise ValueError('e' * 10**7)\n", "[truncated]"),
    "nan total": (HEAD + "    return float('nan'), {}\n", "total reward is nan"),
    "math without import": (HEAD + "    return math.inf, {}\n", "NameError: name 'math' is not defined"),
    "inf via math": ("import math\n" + HEAD + "    return math.inf, {}\n", "total reward is inf"),
    "overflowing int": (HEAD + "    return 10**400, {}\n", "OverflowError"),
    "nan component": (HEAD + "    return 0.0, {'a': float('-inf')}\n", "component 'a' is -inf"),
    "returns float only": (HEAD + "    return 1.0\n", "must return a (float, dict) tuple, got float"),
    "returns None": (HEAD + "    pass\n", "got NoneType"),
    "returns list": (HEAD + "    return [1.0, {}]\n", "got list"),
    "three-tuple": (HEAD + "    return 1.0, {}, 2\n", "got tuple"),
    "bool total": (HEAD + "    return True, {}\n", "must be a float, got bool"),
    "str total": (HEAD + "    return 'x' * 10**6, {}\n", "must be a float, got str"),
    "components not dict": (HEAD + "    return 1.0, [('a', 1.0)]\n", "components must be a dict"),
    "component not float": (HEAD + "    return 1.0, {'a': 'x'}\n", "component 'a' must be a float"),
    "giant components dict": (HEAD + "    return 0.0, {str(i): 1.0 for i in range(10**6)}\n",
                              "more than 32 distinct components"),
    "giant component name": (HEAD + "    return 0.0, {'n' * 10**6: 1.0}\n", "component names must be strings"),
    "non-str component name": (HEAD + "    return 0.0, {1: 1.0}\n", "component names must be strings"),
}


@pytest.mark.parametrize("name", list(RUNTIME))
def test_hostile_program_is_contained_at_run_time(name: str, sandbox: RewardSandbox, sentinel: Path) -> None:
    program, expected = RUNTIME[name]
    assert validate_program(program) == []  # so this exercises the run-time layers, not the static check
    error = sandbox.load(program)
    assert error is None, error
    result = sandbox.evaluate(BATCH)
    assert not result.ok and result.rewards == [] and expected in result.error, result.error
    assert sandbox.error == result.error
    # Disqualified: later batches return the recorded error without running.
    assert sandbox.evaluate(BATCH).error == result.error


def test_printing_is_captured_and_truncated(sandbox: RewardSandbox) -> None:
    assert sandbox.load(HEAD + "    print('y' * 10**6)\n    return 1.0, {}\n") is None
    result = sandbox.evaluate(BATCH)
    assert result.ok and result.rewards == [1.0, 1.0, 1.0]
    assert result.log.startswith("yyy") and result.log.endswith("[output truncated]")
    assert len(result.log) <= FAST.max_log_chars + 32


def test_worker_restarts_for_the_next_program_after_a_kill(sandbox: RewardSandbox) -> None:
    assert sandbox.load(HEAD + "    while True:\n        pass\n") is None
    assert "time limit exceeded" in sandbox.evaluate(BATCH).error
    assert sandbox.load(GOOD) is None
    assert sandbox.evaluate(BATCH).rewards == pytest.approx([0.9, 1.9, -1.1])


def test_error_while_loading_is_recorded(sandbox: RewardSandbox) -> None:
    error = sandbox.load("LIMIT = 1 / 0\n" + HEAD + "    return 0.0, {}\n")
    assert error == "while loading: line 1: ZeroDivisionError: division by zero"
    assert sandbox.evaluate(BATCH).error == error
    assert sandbox.load(GOOD) is None and sandbox.evaluate(BATCH).ok


# -- process-level layers, with static validation switched off ---------------------------------------------


def escape(box: RewardSandbox, program: str) -> str:
    assert box.load(program) is None
    result = box.evaluate(BATCH[:1])
    assert not result.ok and "gadget not found" not in result.error, result.error
    return result.error


@pytest.mark.parametrize(("payload", "expected"), [
    ("    __import__('os')\n", "ImportError: import of 'os' is not allowed"),
    ("    __import__('subprocess')\n", "ImportError: import of 'subprocess' is not allowed"),
    ("    open('x', 'w')\n", "NameError: name 'open' is not defined"),
    ("    getattr(state, 'keys')\n", "NameError: name 'getattr' is not defined"),
])
def test_restricted_namespace_blocks_escapes(payload: str, expected: str, unvalidated: RewardSandbox,
                                             sentinel: Path) -> None:
    assert unvalidated.load(HEAD + payload + "    return 0.0, {}\n") is None
    assert expected in unvalidated.evaluate(BATCH).error


def test_escaped_code_cannot_write_outside_or_inside(unvalidated: RewardSandbox, sentinel: Path) -> None:
    for target in (sentinel / "new.txt", sentinel / "keep.txt", REPO / "sandbox-escape-marker", Path("here.txt")):
        error = escape(unvalidated, GADGET + f"    fd = os['open']({str(target)!r}, os['O_WRONLY'] | os['O_CREAT'])\n"
                                             "    os['write'](fd, b'escaped')\n    return 0.0, {}\n")
        assert "OSError" in error or "PermissionError" in error or "file size limit" in error, error


@pytest.mark.skipif(os.geteuid() != 0, reason="only a root parent can drop the worker to another uid; an "
                    "unprivileged worker runs as its user, and static validation is what stops unlink/rename")
def test_escaped_code_cannot_delete_or_rename(unvalidated: RewardSandbox, sentinel: Path) -> None:
    assert unvalidated.layers["uid"] != 0
    keep = str(sentinel / "keep.txt")
    for call in (f"os['unlink']({keep!r})", f"os['rename']({keep!r}, {keep + '.moved'!r})",
                 f"os['mkdir']({str(sentinel / 'd')!r})", f"os['chmod']({keep!r}, 0o777)"):
        assert "PermissionError" in escape(unvalidated, GADGET + f"    {call}\n    return 0.0, {{}}\n")


def test_escaped_code_cannot_start_processes(unvalidated: RewardSandbox, sentinel: Path) -> None:
    marker = sentinel / "ran"
    error = escape(unvalidated, GADGET + f"    rc = os['system']('touch {marker}')\n"
                                         "    raise RuntimeError(f'system returned {rc}')\n")
    assert "system returned 0" not in error
    if unvalidated.layers["nproc"]:
        assert "BlockingIOError" in escape(unvalidated, GADGET + "    os['fork']()\n    return 0.0, {}\n")


def test_escaped_code_has_no_network(unvalidated: RewardSandbox, sentinel: Path) -> None:
    if unvalidated.layers["network"] == "none":
        pytest.skip("no network namespace on this machine; RLIMIT_NOFILE is the only process-level layer")
    with socket.create_server(("127.0.0.1", 0)) as server:
        server.settimeout(0.5)
        port = server.getsockname()[1]
        # Raw syscalls through the worker's own ctypes; closing stderr frees a descriptor under RLIMIT_NOFILE,
        # so only the network namespace stands in the way.
        address = [2, 0, *port.to_bytes(2, "big"), 127, 0, 0, 1] + [0] * 8
        error = escape(unvalidated, GADGET + "    os['close'](2)\n    ct = os['sys'].modules['ctypes']\n"
                                             "    libc = ct.CDLL(None, use_errno=True)\n"
                                             "    fd = libc.socket(2, 1, 0)\n"
                                             f"    rc = libc.connect(fd, {bytes(address)!r}, 16)\n"
                                             "    raise RuntimeError(f'fd={fd} rc={rc} errno={ct.get_errno()}')\n")
        assert error.endswith(f"fd=2 rc=-1 errno={errno.ENETUNREACH}"), error
        with pytest.raises(TimeoutError):
            server.accept()


def test_escaped_code_cannot_open_files_or_sockets_at_all(unvalidated: RewardSandbox) -> None:
    error = escape(unvalidated, GADGET + "    s = os['sys'].modules['builtins'].__import__('_socket')\n"
                                         "    s.socket()\n    return 0.0, {}\n")
    assert "Too many open files" in error


def test_wall_time_limit_kills_a_blocked_worker(unvalidated: RewardSandbox) -> None:
    # Blocking on the worker's own request pipe uses no CPU, so only the parent's wall clock can end it.
    error = escape(unvalidated, GADGET + "    os['read'](3, 1)\n    return 0.0, {}\n")
    assert error == f"batch of 1 transitions: wall time limit exceeded ({FAST.wall_seconds:g} s); worker killed"


def test_worker_runs_in_a_temp_dir_that_is_removed(unvalidated: RewardSandbox) -> None:
    assert unvalidated.load(GADGET + "    raise RuntimeError(os['getcwd']() + ' ' + os['environ']['TMPDIR'])\n"
                            ) is None
    chrooted = unvalidated.layers["chroot"]
    error = unvalidated.evaluate(BATCH).error
    cwd, tmpdir = error.rsplit(": ", 1)[1].split(" ")
    assert Path(tmpdir).name.startswith("creditgym-sandbox-")
    # Chrooted into the temp dir where the kernel allows it, so its own path reads as "/".
    assert cwd == ("/" if chrooted else tmpdir)
    assert not Path(tmpdir).exists()  # the worker was stopped when the program was disqualified


def test_limits_are_checked() -> None:
    with pytest.raises(ValueError, match="cpu_seconds"):
        SandboxLimits(cpu_seconds=0)
    with pytest.raises(ValueError, match="64 MiB"):
        SandboxLimits(memory_bytes=1 << 20)
    with pytest.raises(RuntimeError, match="no program loaded"):
        RewardSandbox().evaluate(BATCH)


# -- LLMCodeReward -------------------------------------------------------------------------------------------
SOKOBAN_PROGRAM = HEAD + """    progress = next_state["boxes_on_target"] - state["boxes_on_target"]
    moved = 0.0 if next_state["player"] == state["player"] else 0.01
    return 0.5 * progress + moved, {"progress": float(progress), "moved": moved}
"""


def test_llm_code_reward_adds_its_channel_from_declared_state() -> None:
    env = LLMCodeReward(gym.make("creditgym/Sokoban-6x6-1b-v0"), SOKOBAN_PROGRAM, limits=FAST)
    env.reset(seed=3)
    env.action_space.seed(3)
    state, moved_steps = env.unwrapped.state(), 0
    for _ in range(40):
        _, reward, terminated, truncated, info = env.step(env.action_space.sample())
        next_state = env.unwrapped.state()
        expected = 0.5 * (next_state["boxes_on_target"] - state["boxes_on_target"])
        expected += 0.0 if next_state["player"] == state["player"] else 0.01
        moved_steps += next_state["player"] != state["player"]
        components = info["reward_components"]
        assert components["llm_reward"] == pytest.approx(expected)
        assert reward == pytest.approx(sum(components.values()))
        assert set(components) == {"task", "format", "llm_reward"}
        state = next_state
        if terminated or truncated:
            env.reset()
            state = env.unwrapped.state()
    assert moved_steps > 0  # the channel was not constant
    env.close()


def test_llm_code_reward_rejects_bad_programs_and_survives_failing_ones() -> None:
    with pytest.raises(ValueError, match="rejected by static validation"):
        LLMCodeReward(gym.make("creditgym/Sokoban-6x6-1b-v0"), "import os\n" + HEAD + "    return 0.0, {}\n")
    failing = HEAD + "    return 1.0 / (next_state['player'][0] - next_state['player'][0]), {}\n"
    env = LLMCodeReward(gym.make("creditgym/Sokoban-6x6-1b-v0"), failing, limits=FAST)
    env.reset(seed=0)
    for _ in range(3):
        _, reward, _, _, info = env.step(0)
        assert info["reward_components"]["llm_reward"] == 0.0
        assert reward == sum(info["reward_components"].values())
        assert "ZeroDivisionError" in info["llm_reward_error"]
    assert env.error == info["llm_reward_error"]
    env.close()


def test_set_order_and_hash_are_the_same_in_every_worker() -> None:
    # A valid program may iterate over a set of strings; with per-process hash seeds its rewards varied by worker.
    program = HEAD + ("    order = [name for name in {'alpha', 'beta', 'gamma', 'delta', 'epsilon', 'zeta'}]\n"
                      "    return float(hash('alpha') % 1000), {order[0]: 1.0}\n")
    results = []
    for _ in range(4):
        with RewardSandbox(limits=FAST) as box:
            assert box.load(program) is None
            result = box.evaluate(BATCH[:1])
            assert result.ok, result.error
            results.append((result.rewards, result.components))
    assert all(result == results[0] for result in results), results


@pytest.mark.parametrize("limits", [{"max_chars": -1}, {"max_nodes": 0}, {"max_depth": 2.5},
                                    {"max_constant_chars": True}])
def test_validation_limits_refuse_values_that_would_reject_every_program(limits: dict) -> None:
    with pytest.raises(ValueError, match=f"ValidationLimits.{next(iter(limits))} must be a whole number"):
        ValidationLimits(**limits)
