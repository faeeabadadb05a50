"""The service runs on the C library's allocator, and ``release`` gives a wave's memory back.

Each case runs in a fresh interpreter: the allocator is chosen when one starts.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from .support import ROOT

pytestmark = pytest.mark.quick

_REPORT = ("import json, os, sys; from skywire_trio.memory import use_system_allocator; "
           "use_system_allocator(sys.argv[1:]); "
           "print(json.dumps([os.environ.get('PYTHONMALLOC'), sys.getallocatedblocks()]))")


def _allocator(argv: list[str], **env: str) -> tuple[str | None, int]:
    environment = {k: v for k, v in os.environ.items() if k != "PYTHONMALLOC"} | env
    out = subprocess.run([sys.executable, "-c", _REPORT, *argv], env=environment, cwd=ROOT,
                         check=True, capture_output=True, text=True).stdout
    setting, blocks = json.loads(out)
    return setting, blocks


def test_the_service_restarts_itself_on_the_system_allocator() -> None:
    for argv in ([], ["run"], ["run", "--role", "api"]):
        setting, blocks = _allocator(argv)
        # pymalloc counts its blocks; with PYTHONMALLOC=malloc there are none to count.
        assert (setting, blocks) == ("malloc", 0), argv


def test_other_commands_and_an_operators_choice_are_left_alone() -> None:
    for argv in (["tokens", "list"], ["migrate"], ["replay", "x"]):
        setting, blocks = _allocator(argv)
        assert setting is None and blocks > 0, argv
    setting, blocks = _allocator(["run"], PYTHONMALLOC="pymalloc")
    assert setting == "pymalloc" and blocks > 0


def test_the_receiver_keeps_pymalloc(monkeypatch) -> None:
    from skywire_trio import config

    monkeypatch.setenv("PYTHONMALLOC", "malloc")  # the service's, set by its re-execution
    assert config.receiver_environment()["PYTHONMALLOC"] == "pymalloc"
    monkeypatch.setenv("PYTHONMALLOC", "debug")  # an operator's own choice: inherited
    assert config.receiver_environment() is None
    monkeypatch.delenv("PYTHONMALLOC")
    assert config.receiver_environment() is None


# A wave of objects in reference cycles (as closed connections leave them), with one
# long-lived object allocated every ~60 KB among them (as the service's steady work does),
# then dropped. Prints RSS in kB: before, after the drop, after release().
_WAVE = """
import sys
from skywire_trio import memory

def rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS"):
            return int(line.split()[1])

class Node:
    def __init__(self):
        self.me = self
        self.payload = [0] * 30

kept = []
before = rss()
wave = []
for n in range(200_000):
    wave.append(Node())
    if n % 200 == 0:
        kept.append(Node())
del wave
dropped = rss()
memory.release()
print(before, dropped, rss())
"""


def _wave(allocator: str) -> tuple[int, int, int]:
    environment = os.environ | {"PYTHONMALLOC": allocator}
    out = subprocess.run([sys.executable, "-c", _WAVE], env=environment, cwd=ROOT,
                         check=True, capture_output=True, text=True).stdout
    before, dropped, released = map(int, out.split())
    return before, dropped, released


def test_release_gives_a_wave_back_on_the_system_allocator() -> None:
    before, dropped, released = _wave("malloc")
    wave = dropped - before
    assert wave > 40_000  # kB: the cycles are still there until a full collection
    assert released - before < 0.2 * wave, (before, dropped, released)


def test_pymalloc_keeps_the_same_wave() -> None:
    # Why the service changes allocators: pymalloc keeps every 1 MiB arena that still holds
    # one of the long-lived objects.
    before, dropped, released = _wave("pymalloc")
    assert released - before > 0.5 * (dropped - before), (before, dropped, released)
