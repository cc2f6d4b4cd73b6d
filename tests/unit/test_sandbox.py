"""Model-written code in the sandbox: no network, no host files, no secrets, bounded memory and
processes, killed at the timeout; without a backend it refuses unless unsafe execution is allowed."""

import os
import socket
import time

import psutil
import pytest

from rlactors.sandbox import RUN_UIDS, SandboxError, namespaces_available, run_python

pytestmark = pytest.mark.unit
needs_namespaces = pytest.mark.skipif(not namespaces_available(), reason="no usable `unshare` here")


def prints_42(prompts, completions, **_):
    """A reward that runs each completion and checks what it prints."""
    return [
        1.0 if (r := run_python(code, timeout_s=5)).ok and r.stdout.strip() == "42" else 0.0 for code in completions
    ]


@needs_namespaces
def test_hostile_completions_score_the_failure_value_and_leave_the_host_alone(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_secret_value")
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    host_file = tmp_path / "host" / "owned"
    host_file.parent.mkdir()
    os.chmod(host_file.parent, 0o755)
    completions = [
        "print(6 * 7)",
        f"import socket\nsocket.create_connection(('127.0.0.1', {server.getsockname()[1]}), timeout=2)\nprint(42)",
        f"import os\nassert os.system('touch {host_file}') == 0\nprint(42)",
        "import os\nprint(42 if 'HF_TOKEN' not in os.environ else os.environ['HF_TOKEN'])",
        "x = bytearray(100 * 2**30)\nprint(42)",
        "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass",
    ]
    before = {p.pid for p in psutil.process_iter()}
    start = time.perf_counter()
    scores = prints_42(["p"] * len(completions), completions)
    assert scores == [1.0, 0.0, 0.0, 1.0, 0.0, 0.0]  # the secret-reading one prints 42: HF_TOKEN was not there
    assert not host_file.exists()
    assert time.perf_counter() - start < 60
    time.sleep(1)
    left = [
        p
        for p in psutil.process_iter(["pid", "uids", "status"])
        if p.pid not in before
        and p.info["uids"]
        and p.info["uids"].real in RUN_UIDS
        and p.info["status"] != psutil.STATUS_ZOMBIE
    ]  # zombies: dead, unreaped
    assert not left, f"sandboxed processes outlived their run: {left}"
    server.close()


@needs_namespaces
@pytest.mark.skipif(os.geteuid() != 0, reason="a user per run needs root (else runs are the caller's user)")
def test_runs_at_once_have_users_of_their_own_and_a_fork_bomb_starves_no_other():
    from concurrent.futures import ThreadPoolExecutor

    bomb = "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass"
    who = "import os, time\ntime.sleep(1.5)\nprint(os.getuid())"
    with ThreadPoolExecutor(4) as pool:
        bombs = [pool.submit(run_python, bomb, timeout_s=4) for _ in range(2)]
        time.sleep(1.0)  # the bombs have filled their process limits
        users = [pool.submit(run_python, who, timeout_s=8) for _ in range(2)]
        results = [f.result() for f in users]
        assert all(f.result().timed_out for f in bombs)
    assert all(r.ok for r in results), results  # they started beside the bombs
    uids = [int(r.stdout) for r in results]
    assert len(set(uids)) == 2 and all(u in RUN_UIDS for u in uids)


@needs_namespaces
def test_timeout_kills_the_run():
    result = run_python("import time\ntime.sleep(60)", timeout_s=1)
    assert result.timed_out and not result.ok and result.returncode is None


def test_without_a_backend_it_refuses_unless_unsafe_is_allowed():
    with pytest.raises(SandboxError, match="allow_unsafe_local_exec=True"):
        run_python("print(1)", backend="unsafe-local")
    with pytest.warns(RuntimeWarning, match="NOT a sandbox"):
        result = run_python("print(1)", backend="unsafe-local", allow_unsafe_local_exec=True)
    assert result.ok and result.stdout == "1\n"
    with pytest.raises(ValueError, match="backend='docker'"):
        run_python("print(1)", backend="docker")
