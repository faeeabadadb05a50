"""The installed package, not the source tree: deploy/Dockerfile's pip steps, run as written
(a virtual environment in place of the image; no Docker engine here), then `migrate` from
the installed wheel, outside the repository, against a real database."""

from __future__ import annotations

import glob
import os
import shlex
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

from skywire_trio.log import schema

from .support import ROOT, fresh_database

DOCKERFILE = ROOT / "deploy" / "Dockerfile"


def _stages() -> list[list[str]]:
    """Each stage's instructions, continuation lines joined."""
    stages: list[list[str]] = []
    for line in DOCKERFILE.read_text().replace("\\\n", " ").splitlines():
        line = line.strip()
        if line.startswith("FROM "):
            stages.append([])
        elif line and not line.startswith("#"):
            stages[-1].append(line)
    return stages


def _pip_steps(stage: list[str]) -> list[list[str]]:
    """The pip commands of a stage's RUN instructions."""
    steps = []
    for line in stage:
        if line.startswith("RUN "):
            for command in line[4:].split("&&"):
                words = shlex.split(command)
                if words[:1] == ["pip"]:
                    steps.append(words[1:])
    return steps


def _translated(words: list[str], wheels: Path) -> list[str]:
    # --no-cache-dir keeps the image small; here it would only make pip download every
    # dependency again, so pip's cache is allowed.
    out = []
    for word in words:
        if word == "--no-cache-dir":
            continue
        if word.startswith("/wheels"):
            word = str(wheels) + word[len("/wheels"):]
            matches = glob.glob(word)
            out.extend(matches or [word])
            continue
        out.append(word)
    return out


def test_dockerfile_steps_build_a_wheel_that_migrates_outside_the_source_tree(tmp_path):
    build, runtime = _stages()
    # The build stage copies only these, so the wheel cannot lean on anything else.
    copies = [line.split()[1:-1] for line in build if line.startswith("COPY ")]
    assert copies == [["pyproject.toml", "README.md"], ["skywire_trio"]]
    src, wheels = tmp_path / "src", tmp_path / "wheels"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    shutil.copytree(ROOT / "skywire_trio", src / "skywire_trio",
                    ignore=shutil.ignore_patterns("__pycache__"))

    build_steps = _pip_steps(build)
    assert build_steps[0][:2] == ["install", "--no-cache-dir"]  # pip pins itself: skipped
    assert build_steps[1] == ["wheel", "--no-cache-dir", "--wheel-dir", "/wheels", "."]
    pip = [sys.executable, "-m", "pip"]
    subprocess.run([*pip, *_translated(build_steps[1], wheels)], cwd=src, check=True,
                   capture_output=True, timeout=300)
    [wheel] = wheels.glob("skywire_trio-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "skywire_trio/migrations/env.py" in names
    assert "skywire_trio/migrations/script.py.mako" in names
    assert {f"skywire_trio/migrations/versions/{p.name}"
            for p in (ROOT / "skywire_trio/migrations/versions").glob("0*.py")} <= set(names)

    # The runtime stage: a fresh environment with nothing but the wheels, no index.
    [install] = _pip_steps(runtime)
    assert "--no-index" in install and "--find-links" in install
    app = tmp_path / "app"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", app], check=True,
                   timeout=120)
    python = app / "bin" / "python"
    subprocess.run([*pip, "--python", python, *_translated(install, wheels)], check=True,
                   capture_output=True, timeout=300)

    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("SKYWIRE_", "DATABASE_URL", "API_TOKEN_SALT", "PYTHON"))}
    where = subprocess.run([python, "-c", "import skywire_trio; print(skywire_trio.__file__)"],
                           cwd=cwd, env=env, capture_output=True, text=True, check=True)
    assert Path(where.stdout.strip()).is_relative_to(app)
    with fresh_database(migrate=False) as url:
        # The image's environment: production, and only what `migrate` needs.
        env.update(SKYWIRE_ENV="production", DATABASE_URL=url)
        result = subprocess.run([python, "-m", "skywire_trio", "migrate"], cwd=cwd, env=env,
                                capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr
        assert schema.at_head(url)
    assert not (cwd / "alembic.ini").exists() and list(cwd.iterdir()) == []
