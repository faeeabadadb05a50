"""Webhook test helpers: the receiver process, the CLI, and what the receiver logged."""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

from skywire_trio.__main__ import main

from .support import ROOT


class ReceiverProcess:
    """``tests/webhook_receiver.py`` as a process; can be stopped and started on one port."""

    def __init__(self, tmp: Path, port: int = 0, light: bool = False) -> None:
        self.log = tmp / "received.jsonl"
        self.secrets = tmp / "secrets.json"
        self.control = tmp / "control.json"
        self.log.touch()
        self.secrets.write_text("{}")
        self.control.write_text("{}")
        self.port = port
        self.light = light
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.webhook_receiver", "--port", str(self.port),
             "--log", str(self.log), "--secrets", str(self.secrets),
             "--control", str(self.control), *(["--light"] if self.light else [])],
            cwd=ROOT, stdout=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline().strip()
        assert line.startswith("http://127.0.0.1:"), f"receiver did not start: {line!r}"
        self.port = int(line.rsplit(":", 1)[1])

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self.proc = None

    def add_secret(self, path: str, secret: str) -> None:
        secrets = json.loads(self.secrets.read_text())
        secrets[path] = secret
        _replace(self.secrets, json.dumps(secrets))

    def set_mode(self, mode: str, path: str = "*") -> None:
        controls = json.loads(self.control.read_text())
        controls[path] = mode
        _replace(self.control, json.dumps(controls))

    def requests(self, path: str | None = None) -> list[dict]:
        """Every request logged so far (of one path, or all), in arrival order."""
        entries = [json.loads(line) for line in self.log.read_text().splitlines() if line]
        return [e for e in entries if path is None or e["path"] == path]

    def acknowledged(self, path: str) -> list[dict]:
        """The requests of ``path`` that were answered 2xx."""
        return [e for e in self.requests(path) if 200 <= e["status"] < 300]


def _replace(path: Path, text: str) -> None:
    """Write ``text`` atomically (the receiver may read at any moment)."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    tmp.replace(path)


@contextlib.contextmanager
def receiver_process(tmp: Path) -> Iterator[ReceiverProcess]:
    """A started receiver, stopped afterwards."""
    receiver = ReceiverProcess(tmp)
    receiver.start()
    try:
        yield receiver
    finally:
        receiver.stop()


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    """``python -m skywire_trio ARGS`` with ``env``, run in this process (the same ``main``
    without a ~1.5 s interpreter start each time); output captured as text."""
    out, err = io.StringIO(), io.StringIO()
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(env)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(list(args))
    finally:
        os.environ.clear()
        os.environ.update(saved)
    return subprocess.CompletedProcess(args, code, out.getvalue(), err.getvalue())


def create(env: dict[str, str], receiver: ReceiverProcess, name: str, *options: str) -> str:
    """Create subscription ``name`` delivering to ``/<name>``; registers and returns its
    secret (the last line of the command's output)."""
    done = cli(env, "subscriptions", "create", name, "--url", f"{receiver.url}/{name}",
               *options)
    assert done.returncode == 0, done.stderr
    secret = done.stdout.strip().splitlines()[-1]
    assert secret.startswith("whsec_"), done.stdout
    receiver.add_secret(f"/{name}", secret)
    return secret


def listing(env: dict[str, str]) -> dict[str, dict]:
    """``subscriptions list --json`` by name."""
    done = cli(env, "subscriptions", "list", "--json")
    assert done.returncode == 0, done.stderr
    rows = [json.loads(line) for line in done.stdout.splitlines() if line]
    return {row["name"]: row for row in rows}


def delivered_ids(entries: list[dict]) -> list[int]:
    """Event ids of acknowledged requests, in arrival order, repeats included."""
    return [i for e in entries if 200 <= e["status"] < 300 for i in e["ids"]]


def check_stream(requests: list[dict], expected: list[int]) -> int:
    """Assert at-least-once, ordered delivery; returns how many requests were repeats.

    Every request under one webhook-id carries the same events (a repeat is a whole batch),
    and the first acknowledged request of each webhook-id, in arrival order, is exactly
    ``expected``.
    """
    batches: dict[str, list[int]] = {}
    for r in requests:
        assert r["verified"] is not False, r
        assert batches.setdefault(r["webhook_id"], r["ids"]) == r["ids"], r["webhook_id"]
    seen: set[str] = set()
    stream: list[int] = []
    for r in requests:
        if r["status"] == 200 and r["webhook_id"] not in seen:
            seen.add(r["webhook_id"])
            stream += r["ids"]
    assert stream == expected
    return len(requests) - len(seen)
