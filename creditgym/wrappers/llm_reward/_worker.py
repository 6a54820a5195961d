"""Sandbox worker: runs one untrusted reward program on batches of transitions.

Started by `sandbox.py` as `python -s -P -S -B _worker.py CONFIG_JSON`, so it imports only the standard library
and never the creditgym package. It hardens itself before reading any program (namespaces, resource limits,
dropped privileges), then answers length-prefixed JSON frames on its original stdin/stdout.

Three processes, where the kernel gives a PID namespace (else the first and the last):
- the watchdog, the one `sandbox.py` started: it stays outside the new PID namespace, runs no untrusted code,
  and kills the rest as soon as the parent dies (whichever of the parent's threads started it), then deletes
  the temp dir the parent can no longer delete;
- pid 1 of the new namespace, as confined as the worker: it only reaps the worker. The kernel does not deliver
  default-action signals such as RLIMIT_CPU's SIGXCPU to a namespace's init, so the worker must not be pid 1;
- the worker, pid 2, which runs the program. It cannot see, signal or ptrace any process outside the namespace,
  so even an unprivileged parent, which shares the worker's uid, is out of its reach. When pid 1 dies, the kernel
  kills the worker.

Each ends the way its child ended, so the parent's `wait` sees the worker's own exit status or signal.
"""

import builtins
import ctypes
import json
import math
import os
import resource
import select
import signal
import struct
import sys

_CLONE_NEWUSER = 0x10000000
_CLONE_NEWNET = 0x40000000
_CLONE_NEWPID = 0x20000000
_PR_SET_PDEATHSIG = 1
_PR_SET_NO_NEW_PRIVS = 38
_LINUX_CAPABILITY_VERSION_3 = 0x20080522
# A root-started worker drops to uid = gid = _UID_BASE + its pid: unique among live workers (so one worker cannot
# signal or ptrace another, nor any host process), owning no file, and above the ranges that systemd, container
# runtimes and subuid allocations hand out.
_UID_BASE = 0x70000000
_FILENAME = "<reward program>"
_HEADER = struct.Struct(">I")

_SAFE_BUILTINS = (
    "abs", "all", "any", "bool", "dict", "divmod", "enumerate", "filter", "float", "frozenset", "int",
    "isinstance", "len", "list", "map", "max", "min", "pow", "range", "reversed", "round", "set", "sorted",
    "str", "sum", "tuple", "zip", "iter", "next", "slice", "hash", "chr", "ord", "repr", "ascii", "bin", "hex",
    "oct", "complex", "callable", "True", "False", "None", "NotImplemented",
    "Exception", "ArithmeticError", "AssertionError", "IndexError", "KeyError", "LookupError", "OverflowError",
    "RuntimeError", "StopIteration", "TypeError", "ValueError", "ZeroDivisionError",
)


def _read_exact(fd: int, size: int) -> bytes | None:
    chunks, remaining = [], size
    while remaining:
        chunk = os.read(fd, min(remaining, 1 << 20))
        if not chunk:
            return None
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)


def _receive(fd: int) -> dict | None:
    header = _read_exact(fd, _HEADER.size)
    if header is None:
        return None
    body = _read_exact(fd, _HEADER.unpack(header)[0])
    return None if body is None else json.loads(body)


def _send(fd: int, message: dict) -> None:
    body = json.dumps(message, allow_nan=False, separators=(",", ":")).encode()
    view = memoryview(_HEADER.pack(len(body)) + body)
    while view:
        view = view[os.write(fd, view):]


def _close(fds: tuple[int, ...]) -> None:
    for fd in fds:
        os.close(fd)


def _libc() -> ctypes.CDLL | None:
    """The C library, for Linux's unshare, capset and prctl; None elsewhere (the layers that need it are skipped)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None


def _unshare(libc: ctypes.CDLL | None) -> tuple[str, bool]:
    """Moves the process into a fresh network namespace (only a downed loopback device) and, for the children it
    forks next, a fresh PID namespace. Returns the network layer's name and whether the PID namespace was made."""
    if libc is None:
        return "none", False
    # Unprivileged users can still get them inside a user namespace where the kernel allows it.
    for network, flags in (("netns", _CLONE_NEWNET), ("userns+netns", _CLONE_NEWUSER | _CLONE_NEWNET)):
        if libc.unshare(flags | _CLONE_NEWPID) == 0:
            return network, True
    for network, flags in (("netns", _CLONE_NEWNET), ("userns+netns", _CLONE_NEWUSER | _CLONE_NEWNET)):
        if libc.unshare(flags) == 0:
            return network, False
    return "none", False


def _drop_capabilities(libc: ctypes.CDLL | None) -> bool:
    """Clears every capability (used in a user namespace, where the process holds all of them after unshare)."""
    if libc is None:
        return False
    header = (ctypes.c_uint32 * 2)(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (ctypes.c_uint32 * 6)()  # two (effective, permitted, inheritable) sets, all empty
    return libc.capset(header, data) == 0


def _confine_files(network: str, libc: ctypes.CDLL | None) -> bool:
    """chroot into the working dir (the sandbox's empty temp dir), so no host file or dir can be reached at all.

    Needs CAP_SYS_CHROOT: a root worker has it until it drops to its own uid; an unprivileged worker has it inside
    its user namespace and then gives up every capability, since one that kept it could chroot back out.
    """
    if os.geteuid() != 0 and network != "userns+netns":
        return False
    try:
        os.chroot(".")
        os.chdir("/")
    except OSError:
        return False
    return os.geteuid() == 0 or _drop_capabilities(libc)


def _harden(config: dict, protocol_fds: tuple[int, int], network: str, libc: ctypes.CDLL | None,
            watchdog_pid: int) -> dict:
    """Limits, chroot and privileges, for this process and every child it forks (RLIMIT_NPROC excepted)."""
    layers: dict = {"network": network}
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    resource.setrlimit(resource.RLIMIT_FSIZE, (0, 0))
    resource.setrlimit(resource.RLIMIT_AS, (config["memory_bytes"], config["memory_bytes"]))
    # The CPU limit is re-armed per request (see _arm_cpu); the hard limit stays open so the soft one can move.
    resource.setrlimit(resource.RLIMIT_CPU, (config["cpu_seconds"], resource.RLIM_INFINITY))
    # No new descriptors at all: no files, sockets or pipes beyond the two protocol pipes.
    max_fd = max(protocol_fds) + 1
    resource.setrlimit(resource.RLIMIT_NOFILE, (max_fd, max_fd))
    layers["chroot"] = _confine_files(layers["network"], libc)
    if os.geteuid() == 0:
        # The watchdog's pid: inside a PID namespace every worker's own pid is the same.
        uid = _UID_BASE + watchdog_pid
        os.setgroups([])
        os.setresgid(uid, uid, uid)
        os.setresuid(uid, uid, uid)
    # No exec of a set-user-ID binary can regain privileges (matters where the chroot above was not possible).
    layers["no_new_privs"] = libc is not None and libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) == 0
    layers["uid"] = os.getuid()
    # Set by the worker itself (_forbid_processes), after the last fork; the kernel exempts root from it.
    layers["nproc"] = os.getuid() != 0
    layers["rlimits"] = {"cpu_seconds": config["cpu_seconds"], "memory_bytes": config["memory_bytes"],
                         "file_size": 0, "open_files": max_fd, "processes": 0, "core": 0}
    return layers


def _die_with_parent(libc: ctypes.CDLL | None) -> None:
    """SIGKILL when the parent process dies. Set after the last change of uid, which clears it."""
    if libc is not None:
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def _end_like(status: int, child_is_init: bool) -> None:
    """Ends this process the way its child ended (a wait status), so that its own parent sees the same."""
    code = os.waitstatus_to_exitcode(status)
    if child_is_init and code > 128:  # an init cannot end itself with a signal, so it passed it on as 128 + signal
        code = 128 - code
    if code < 0 and os.getpid() != 1:
        if code not in (-signal.SIGKILL, -signal.SIGSTOP):
            signal.signal(-code, signal.SIG_DFL)  # Python ignores some, SIGXFSZ among them
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        os.kill(os.getpid(), -code)
    os._exit(128 - code if code < 0 else code)


def _watch(child: int, parent_pid: int, child_is_init: bool, directory: str, started_in: os.stat_result) -> None:
    """The watchdog: waits for its child, and if the parent dies first (then no one else would) kills it. Either way
    it deletes the sandbox's temp dir, which serves one worker only: a parent that dies closes the worker's pipe
    before the kernel reparents this process, so the worker can end (at end-of-file) before the parent's death shows
    here, and a living parent deletes the dir too, ignoring what is gone."""
    watched = []
    for pid in (child, parent_pid):
        try:
            watched.append(os.pidfd_open(pid))
        except (OSError, AttributeError):  # no pidfds (not Linux, or < 5.3), or the parent is gone: poll below
            pass
    poller = select.poll()
    for fd in watched:
        poller.register(fd, select.POLLIN)
    while True:
        pid, status = os.waitpid(child, os.WNOHANG)
        if pid:
            _remove_directory(directory, started_in)
            _end_like(status, child_is_init)
        if os.getppid() != parent_pid:
            os.kill(child, signal.SIGKILL)
            os.waitpid(child, 0)
            _remove_directory(directory, started_in)
            os._exit(1)
        poller.poll(None if len(watched) == 2 else 250)


def _remove_directory(directory: str, started_in: os.stat_result) -> None:
    """Deletes the temp dir the parent made for this sandbox, but only if `directory` still names the dir this
    process started in: the worker, now dead, may have renamed it and left a link or another dir in its place."""
    import shutil  # here, so that no worker start pays for it

    try:
        now = os.lstat(directory)
    except OSError:
        return
    if (now.st_dev, now.st_ino) == (started_in.st_dev, started_in.st_ino):
        shutil.rmtree(directory, ignore_errors=True)


def _reap(worker: int) -> None:
    """pid 1 of the worker's namespace: waits for the worker, then ends, which ends the namespace."""
    _, status = os.waitpid(worker, 0)
    _end_like(status, child_is_init=False)


def _forbid_processes() -> None:
    resource.setrlimit(resource.RLIMIT_NPROC, (0, 0))


def _arm_cpu(cpu_seconds: int) -> None:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    used = math.ceil(usage.ru_utime + usage.ru_stime)
    resource.setrlimit(resource.RLIMIT_CPU, (used + cpu_seconds, resource.RLIM_INFINITY))


class _Log:
    """A bounded stand-in for print: output is kept up to a size cap and returned with the result."""

    def __init__(self, max_chars: int) -> None:
        self.max_chars = max_chars
        self.parts: list[str] = []
        self.size = 0
        self.truncated = False

    def print(self, *args: object, sep: str = " ", end: str = "\n") -> None:
        if self.size >= self.max_chars:
            self.truncated = True
            return
        text = str(sep).join(str(arg)[: self.max_chars] for arg in args) + str(end)
        room = self.max_chars - self.size
        if len(text) > room:
            text, self.truncated = text[:room], True
        self.parts.append(text)
        self.size += len(text)

    def take(self) -> str:
        text = "".join(self.parts) + ("\n[output truncated]" if self.truncated else "")
        self.parts, self.size, self.truncated = [], 0, False
        return text


def _import_math(name: str, globals: object = None, locals: object = None, fromlist: object = (),
                 level: int = 0) -> object:
    if name != "math" or level:
        raise ImportError(f"import of {name!r} is not allowed (only math)")
    return math


def _describe(error: BaseException, config: dict) -> str:
    if isinstance(error, MemoryError):
        return f"MemoryError (the memory limit is {config['memory_bytes'] >> 20} MiB)"
    max_chars = config["max_error_chars"]
    line = None
    trace = error.__traceback__
    while trace is not None:
        if trace.tb_frame.f_code.co_filename == _FILENAME:
            line = trace.tb_lineno
        trace = trace.tb_next
    try:
        message = str(error)
    except BaseException:  # a hostile __str__ must not take the worker down
        message = "<unprintable>"
    if len(message) > max_chars:
        message = message[:max_chars] + "... [truncated]"
    where = f"line {line}: " if line else ""
    return f"{where}{type(error).__name__}: {message}" if message else f"{where}{type(error).__name__}"


def _number(value: object, what: str) -> float:
    # Exact types: bool is rejected, and subclasses cannot override float().
    if type(value) not in (float, int):
        raise TypeError(f"{what} must be a float, got {type(value).__name__}")
    number = float(value)
    if not math.isfinite(number):
        raise ValueError(f"{what} is {number}, not a finite float")
    return number


def _evaluate(function: object, transitions: list, config: dict) -> dict:
    n = len(transitions)
    rewards = [0.0] * n
    components: dict[str, list[float]] = {}
    for i, (state, action, next_state) in enumerate(transitions):
        try:
            output = function(state, action, next_state)
            if type(output) is not tuple or len(output) != 2:
                raise TypeError(f"must return a (float, dict) tuple, got {type(output).__name__}")
            total, parts = output
            rewards[i] = _number(total, "the total reward")
            if type(parts) is not dict:
                raise TypeError(f"components must be a dict, got {type(parts).__name__}")
            for name, value in parts.items():
                if type(name) is not str or not 0 < len(name) <= config["max_name_chars"] or not name.isprintable():
                    raise TypeError(f"component names must be strings of 1 to {config['max_name_chars']} "
                                    "printable characters")
                column = components.get(name)
                if column is None:
                    if len(components) >= config["max_components"]:
                        raise ValueError(f"more than {config['max_components']} distinct components")
                    column = components[name] = [0.0] * n
                column[i] = _number(value, f"component {name!r}")
        except BaseException as error:  # anything the program does is data for the parent
            return {"error": f"transition {i}: {_describe(error, config)}"}
    return {"rewards": rewards, "components": components}


def main() -> None:
    config = json.loads(sys.argv[1])
    # Keep the protocol pipes on private descriptors, so a stray write to fd 1 cannot corrupt a frame.
    read_fd, write_fd = os.dup(0), os.dup(1)
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    os.close(devnull)
    protocol_fds = (read_fd, write_fd)
    libc = _libc()
    watchdog_pid = os.getpid()
    started_in = os.stat(".")  # the parent starts the worker in its temp dir
    network, pid_namespace = _unshare(libc)
    child = os.fork()
    if child:
        _close(protocol_fds)  # so the parent reads end-of-file as soon as the worker dies
        _watch(child, config["parent_pid"], pid_namespace, config["directory"], started_in)
    layers = _harden(config, protocol_fds, network, libc, watchdog_pid)
    _die_with_parent(libc)
    if pid_namespace:
        worker = os.fork()
        if worker:
            _close(protocol_fds)
            _reap(worker)
        _die_with_parent(libc)
    _forbid_processes()
    layers["pid_namespace"] = pid_namespace
    _send(write_fd, {"layers": layers})
    log = _Log(config["max_log_chars"])
    safe = {name: getattr(builtins, name) for name in _SAFE_BUILTINS}
    safe.update(__import__=_import_math, print=log.print)
    function = None
    while True:
        request = _receive(read_fd)
        if request is None:
            return
        _arm_cpu(config["cpu_seconds"])
        if request["op"] == "load":
            namespace = {"__builtins__": safe, "__name__": "reward_program"}
            try:
                exec(compile(request["source"], _FILENAME, "exec"), namespace)
                function = namespace.get("compute_dense_reward")
                reply = {} if callable(function) else {"error": "compute_dense_reward is not defined"}
            except BaseException as error:
                reply = {"error": f"while loading: {_describe(error, config)}"}
        else:
            reply = _evaluate(function, request["transitions"], config)
        reply["log"] = log.take()
        _send(write_fd, reply)


if __name__ == "__main__":
    main()
