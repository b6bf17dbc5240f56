"""Run the ``logitcache`` CLI and kill the process right after its K-th metadata write.

    $ python -m tests.killpoints K dump STORE --teacher ... # exit 137 right after write K
    $ python -m tests.killpoints 0 dump STORE ...           # no kill; prints "metadata writes: N"
    $ KILLPOINTS_KEY=shard_done/c/ python -m tests.killpoints 2 dump ...   # right after the 2nd shard's ledger entry
    $ KILLPOINTS_SET=logitcache.store._token_writes.INDEX_CHUNK_BYTES=512 ...   # module settings, comma-separated

A real kill (``os._exit``: no cleanup, no finally blocks, no flushing), at an exact point: the
crash tests use it to stop a dump after every one of its ``zarr.json`` writes in turn.

``run(K, args)`` does the same from a test without paying for a fresh interpreter each time: a
fork server (one per import-time environment) imports torch, zarr, sklearn and logitcache once,
runs no torch op (so no OpenMP pool exists to break fork; zarr resets its loop thread after fork
itself), and forks one child per run. The child is a separate process with its own pid that runs
the CLI and dies at its kill point by ``os._exit(137)`` exactly as the command above does.
"""

from __future__ import annotations

import asyncio
import atexit
import importlib
import json
import os
import select
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import traceback
from pathlib import Path

import zarr.storage

from logitcache.cli import cli

REPO = Path(__file__).resolve().parents[1]
# Read by the CLI when it runs (not when it is imported), so runs that differ only in these share a server.
RUN_TIME_PREFIXES = ("KILLPOINTS_", "LOGITCACHE_", "AWS_")
# What a dump imports; the server imports it once so that no forked run pays for it.
WARM_MODULES = ("torch", "numpy", "sklearn.datasets", "logitcache.dump", "logitcache.dump.run",
                "logitcache.dump.token_dump", "logitcache.sources", "logitcache.store", "logitcache.verify",
                "logitcache.store_info", "tests.factories")


def _install(target: int) -> list[int]:
    count = [0]
    original = zarr.storage.LocalStore.set

    match = os.environ.get("KILLPOINTS_KEY")
    one_at_a_time = asyncio.Lock()  # parallel shard writers: no other counted write lands beside the K-th

    async def set_then_maybe_die(self, key, value):
        if not ((match in key) if match else key.endswith("zarr.json")):
            return await original(self, key, value)
        async with one_at_a_time:
            await original(self, key, value)
            count[0] += 1
            if count[0] == target:
                os._exit(137)

    zarr.storage.LocalStore.set = set_then_maybe_die
    return count


def _run_cli(kill_at: int, args: list[str]) -> None:
    """The CLI with the kill hook; ends by SystemExit (or dies at the kill point)."""
    for setting in filter(None, os.environ.get("KILLPOINTS_SET", "").split(",")):  # e.g. small chunks
        name, value = setting.split("=")
        module, attribute = name.rsplit(".", 1)
        setattr(importlib.import_module(module), attribute, type(getattr(importlib.import_module(module),
                                                                         attribute))(value))
    count = _install(kill_at)
    try:
        cli.main(args, prog_name="logitcache", standalone_mode=True)
    except SystemExit as done:
        print(f"metadata writes: {count[0]}", file=sys.stderr)
        raise SystemExit(done.code) from None


def main() -> None:
    if sys.argv[1] == "--serve":
        _serve(sys.argv[2])
    _run_cli(int(sys.argv[1]), sys.argv[2:])


# -- the fork server ---------------------------------------------------------------------------------

def _exit_code(code) -> int:
    """What the interpreter would exit with for ``SystemExit(code)``."""
    if code is None or isinstance(code, int):
        return code or 0
    print(code, file=sys.stderr)
    return 1


def _child(request: dict) -> None:
    """In the forked run: its own directory, environment and standard streams, then the CLI."""
    try:
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        for fd, path, flags in ((0, os.devnull, os.O_RDONLY), (1, request["stdout"], os.O_WRONLY),
                                (2, request["stderr"], os.O_WRONLY)):
            opened = os.open(path, flags)
            os.dup2(opened, fd)
            os.close(opened)
        sys.argv = [__file__, str(request["kill_at"]), *request["args"]]
        _run_cli(request["kill_at"], request["args"])
        code = 0
    except SystemExit as done:
        code = _exit_code(done.code)
    except BaseException:  # noqa: BLE001 - as the interpreter would: the traceback on stderr, exit 1
        traceback.print_exc()
        code = 1
    try:
        atexit._run_exitfuncs()  # what a normal interpreter exit runs (zarr stops its loop thread)
        sys.stdout.flush()
        sys.stderr.flush()
    finally:
        os._exit(code)


def _handle(conn: socket.socket) -> None:
    """In a forked handler: fork the run, tell the client its pid, wait, send its return code."""
    try:
        request = json.loads(conn.makefile("r").readline())
        pid = os.fork()
        if pid == 0:
            conn.close()
            _child(request)
        conn.sendall(json.dumps({"pid": pid}).encode() + b"\n")
        _, status, usage = os.wait4(pid, 0)
        conn.sendall(json.dumps({"returncode": os.waitstatus_to_exitcode(status),
                                 "cpu_seconds": usage.ru_utime + usage.ru_stime}).encode() + b"\n")
    finally:
        os._exit(0)


def _serve(path: str) -> None:
    """Import everything, then fork a handler per connection until the client closes our stdin."""
    for name in WARM_MODULES:
        importlib.import_module(name)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(64)
    threads = len(os.listdir("/proc/self/task")) if os.path.isdir("/proc/self/task") else 1
    print(json.dumps({"ready": True, "threads": threads}), flush=True)
    while True:
        try:
            while os.waitpid(-1, os.WNOHANG)[0]:  # reap finished handlers
                pass
        except ChildProcessError:
            pass
        ready, _, _ = select.select([listener, sys.stdin], [], [], 1.0)
        if sys.stdin in ready and not os.read(sys.stdin.fileno(), 1):
            os._exit(0)  # the client is gone
        if listener in ready:
            conn, _ = listener.accept()
            if os.fork() == 0:
                listener.close()
                _handle(conn)
            conn.close()


# -- the client --------------------------------------------------------------------------------------

_servers: dict[frozenset, tuple[subprocess.Popen, str]] = {}
_servers_lock = threading.Lock()


def _server_for(env: dict[str, str]) -> str:
    """The socket of a server started with ``env`` (less what is read at run time); starts it once."""
    key = frozenset((k, v) for k, v in env.items() if not k.startswith(RUN_TIME_PREFIXES))
    with _servers_lock:
        if key not in _servers:
            path = os.path.join(tempfile.mkdtemp(prefix="killpoints-"), "socket")
            server = subprocess.Popen([sys.executable, "-m", "tests.killpoints", "--serve", path], cwd=REPO,
                                      env=dict(key), stdin=subprocess.PIPE, stdout=subprocess.PIPE)
            if not server.stdout.readline():
                raise RuntimeError(f"the killpoints server did not start (exit {server.wait()})")
            _servers[key] = server, path
            atexit.register(_stop, server, path)
        return _servers[key][1]


def _stop(server: subprocess.Popen, path: str) -> None:
    server.stdin.close()
    server.wait(timeout=60)
    os.unlink(path)
    os.rmdir(os.path.dirname(path))


def run(kill_at: int, args: list[str], *, env: dict[str, str] | None = None, cwd: Path | str = REPO,
        timeout: float = 300, text: bool = True) -> subprocess.CompletedProcess:
    """``python -m tests.killpoints kill_at *args`` as a forked child of a warm server (see above)."""
    env = dict(os.environ if env is None else env)
    command = [sys.executable, "-m", "tests.killpoints", str(kill_at), *map(str, args)]
    with tempfile.TemporaryDirectory() as tmp, socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        outputs = {name: os.path.join(tmp, name) for name in ("stdout", "stderr")}
        for path in outputs.values():
            open(path, "wb").close()
        conn.settimeout(timeout)
        conn.connect(_server_for(env))
        conn.sendall(json.dumps({"kill_at": kill_at, "args": command[4:], "env": env, "cwd": str(cwd),
                                 **outputs}).encode() + b"\n")
        replies = conn.makefile("r")
        pid = json.loads(replies.readline())["pid"]
        try:
            done = json.loads(replies.readline())
        except TimeoutError:
            os.kill(pid, signal.SIGKILL)
            raise subprocess.TimeoutExpired(command, timeout) from None
        captured = [Path(outputs[name]).read_bytes() for name in ("stdout", "stderr")]
    if text:
        captured = [data.decode() for data in captured]
    result = subprocess.CompletedProcess(command, done["returncode"], *captured)
    result.cpu_seconds = done["cpu_seconds"]  # the run's own CPU time, for measurements
    return result


if __name__ == "__main__":
    main()
