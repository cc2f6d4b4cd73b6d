"""Running model-written Python for a reward, away from the host.

    from rlactors.sandbox import run_python

    def passes_tests(prompts, completions, tests, **_):
        return [1.0 if run_python(code + "\\n" + t).ok else 0.0 for code, t in zip(completions, tests)]

The `namespaces` backend (Linux, util-linux `unshare`, run as root or with unprivileged user
namespaces) starts the code as a user of its own in new network, PID and mount namespaces: no network
(not even the host's loopback), no view of host processes, limits on memory, CPU time, processes,
open files and file size, a private working folder, an environment without the host's secrets;
everything it started dies with it at the timeout. This keeps honest mistakes and simple attacks
off the host; it is not a hardened sandbox (no seccomp filter, the host file system is readable
where any user may read). For hostile code at scale use a VM-grade sandbox (gVisor, Firecracker).

As root, every run that is going on at once has a user id of its own (`RUN_UIDS`, held by a
lock file while the run lasts; no passwd entry): its process limit counts its own processes only
(a fork bomb in one run cannot keep another from starting), it cannot signal another run's
processes, and its working folder is closed to the others. Without root (unprivileged user
namespaces) the code runs as the caller's user, and runs share that user's process count.

As a tool for multi-turn training: `GRPOTrainer(..., tools=[rlactors.sandbox.python])` (YAML:
`tools: ["rlactors.sandbox:python"]`); the model's code runs as above and it reads what it printed.

Without a usable backend, `run_python` refuses, unless `allow_unsafe_local_exec=True`: then the
code runs as a plain child process with the same limits, and a warning says it is not a sandbox.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import os
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import warnings
from collections.abc import Iterator
from dataclasses import dataclass

RUN_UIDS = range(1_500_000_000, 1_500_004_096)  # one per run in progress on this host, as root
UID_LOCKS = os.path.join(tempfile.gettempdir(), "rlactors-sandbox-uids")
BACKENDS = ("auto", "namespaces", "unsafe-local")


class SandboxError(RuntimeError):
    """No sandbox backend can run here (and unsafe local execution was not allowed)."""


@dataclass(frozen=True)
class RunResult:
    returncode: int | None  # None: killed at the timeout
    stdout: str
    stderr: str
    timed_out: bool

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not self.timed_out


@functools.cache
def namespaces_available() -> bool:
    """Whether the `namespaces` backend works here (probed once per process)."""
    unshare = shutil.which("unshare")
    return (
        bool(unshare)
        and subprocess.run([unshare, *_unshare_flags(), "true"], capture_output=True, timeout=30).returncode == 0
    )


def run_python(
    code: str,
    *,
    stdin: str = "",
    timeout_s: float = 10.0,
    memory_mb: int = 512,
    max_processes: int = 32,
    backend: str = "auto",
    allow_unsafe_local_exec: bool = False,
) -> RunResult:
    """Runs `code` with `python -I` under `backend`; returns its exit code and output."""
    if backend not in BACKENDS:
        raise ValueError(f"backend={backend!r}: use one of {BACKENDS}")
    if backend == "auto":
        backend = "namespaces" if namespaces_available() else "unsafe-local"
    if backend == "namespaces" and not namespaces_available():
        raise SandboxError(
            "backend='namespaces' needs util-linux `unshare` and root or unprivileged user "
            "namespaces, and cannot run here"
        )
    if backend == "unsafe-local":
        if not allow_unsafe_local_exec:
            raise SandboxError(
                "no sandbox backend can run here (the 'namespaces' backend needs util-linux `unshare` and root "
                "or unprivileged user namespaces). Run rewards that execute code on a machine where it works, "
                "or pass allow_unsafe_local_exec=True to run the code as a plain child process (NOT a sandbox)"
            )
        warnings.warn(
            "rlactors.sandbox: running code with allow_unsafe_local_exec=True: a plain child process "
            "with resource limits, NOT a sandbox",
            RuntimeWarning,
            stacklevel=2,
        )
    workdir = tempfile.mkdtemp(prefix="rlactors-sandbox-")
    own_user = backend == "namespaces" and os.geteuid() == 0
    with _run_uid() if own_user else contextlib.nullcontext() as uid:
        return _run(code, backend, workdir, uid, stdin, timeout_s, memory_mb, max_processes)


def _run(
    code: str,
    backend: str,
    workdir: str,
    uid: int | None,
    stdin: str,
    timeout_s: float,
    memory_mb: int,
    max_processes: int,
) -> RunResult:
    try:
        command = [_interpreter(backend), "-I", "-c", code]
        if backend == "namespaces":
            if uid is not None:
                os.chown(workdir, uid, uid)  # mkdtemp made it 0o700: the other runs' users cannot enter
            command = [shutil.which("unshare"), *_unshare_flags(uid), *command]
        env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": workdir}
        proc = subprocess.Popen(
            command,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=workdir,
            env=env,
            start_new_session=True,
            preexec_fn=lambda: _limits(memory_mb, timeout_s, max_processes),
        )
        try:
            out, err = proc.communicate(stdin, timeout=timeout_s)
        except subprocess.TimeoutExpired:
            _kill(proc.pid)
            out, err = proc.communicate()
            return RunResult(None, out, err, timed_out=True)
        return RunResult(proc.returncode, out, err, timed_out=False)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _interpreter(backend: str) -> str:
    """A Python that the sandbox user may run (code gets the standard library only, `-I`)."""
    candidates = [os.path.realpath(sys.executable), "/usr/bin/python3", "/usr/local/bin/python3"]
    if backend != "namespaces" or os.geteuid() != 0:
        return candidates[0]
    for path in candidates:
        if os.path.exists(path) and _everyone_may_run(os.path.realpath(path)):
            return path
    raise SandboxError(
        f"no Python that the sandbox's user may run: {candidates[0]} sits in a folder others cannot "
        "enter; install a system python3 (/usr/bin/python3)"
    )


def _everyone_may_run(path: str) -> bool:
    import stat

    if not os.stat(path).st_mode & stat.S_IXOTH:
        return False
    folder = os.path.dirname(path)
    while True:
        if not os.stat(folder).st_mode & stat.S_IXOTH:
            return False
        parent = os.path.dirname(folder)
        if parent == folder:
            return True
        folder = parent


def _unshare_flags(uid: int | None = None) -> list[str]:
    flags = ["--net", "--pid", "--fork", "--kill-child", "--mount-proc"]
    if os.geteuid() == 0:
        uid = RUN_UIDS[0] if uid is None else uid
        return [*flags, "--setuid", str(uid), "--setgid", str(uid)]
    return ["--map-root-user", *flags]


@contextlib.contextmanager
def _run_uid() -> Iterator[int]:
    """A user id no other run on this host holds now (a lock on its file, freed with the process)."""
    os.makedirs(UID_LOCKS, mode=0o700, exist_ok=True)
    start = random.randrange(len(RUN_UIDS))
    for i in range(len(RUN_UIDS)):
        uid = RUN_UIDS[(start + i) % len(RUN_UIDS)]
        fd = os.open(os.path.join(UID_LOCKS, str(uid)), os.O_CREAT | os.O_RDWR, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue
        try:
            yield uid
        finally:
            os.close(fd)
        return
    raise SandboxError(f"{len(RUN_UIDS)} sandboxed runs are going on at once on this host; none is left for this one")


def _limits(memory_mb: int, timeout_s: float, max_processes: int) -> None:
    """In the child before exec: limits that the sandboxed code inherits. The process limit counts
    all of a user's processes: as root the code runs as the run's own user, else the caller's count
    is added."""
    cpu = int(timeout_s) + 1
    if os.geteuid() != 0:
        max_processes += _processes_of(os.getuid())
    resource.setrlimit(resource.RLIMIT_AS, (memory_mb * 2**20, memory_mb * 2**20))
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu))
    resource.setrlimit(resource.RLIMIT_NPROC, (max_processes, max_processes))
    resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))
    resource.setrlimit(resource.RLIMIT_FSIZE, (16 * 2**20, 16 * 2**20))


def _processes_of(uid: int) -> int:
    count = 0
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                count += os.stat(f"/proc/{entry}").st_uid == uid
            except OSError:
                pass
    return count


def _kill(pid: int) -> None:
    """Kills the run: first the code's first process (the PID namespace's init: the kernel then kills
    everything in the namespace, whatever its process group), then its process group."""
    import signal

    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            children = [int(c) for c in f.read().split()]
    except OSError:
        children = []
    for child in children:
        try:
            os.kill(child, signal.SIGKILL)
        except ProcessLookupError:
            pass
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def python(code: str) -> str:
    """Runs a Python program in a sandbox (no network, no host files, limited memory and time) and
    returns what it printed.

    Args:
        code: the program; print the values you want to see
    """
    try:
        result = run_python(code, timeout_s=10.0, memory_mb=512)
    except SandboxError as err:
        return f"Error: {err}"
    if result.timed_out:
        return "Error: the program did not finish within 10 s and was killed"
    last_error = result.stderr.strip().splitlines()[-1:] if result.stderr.strip() else []
    status = [] if result.returncode == 0 else [f"Error: exit status {result.returncode}"]
    text = "\n".join(part for part in [*status, result.stdout.strip(), *last_error] if part)
    return text[:4000] or "(nothing printed)"
