"""Settings: declared once in config.py; from_env, the `config` command and the documents'
tables all follow from the declarations. No database needed."""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from skywire_trio import config
from skywire_trio.config import ConfigError, Settings, declarations, from_env
from skywire_trio.firehose.framefile import write_frames
from skywire_trio.identifiers import check_scope

from .support import ROOT, free_port

pytestmark = pytest.mark.quick

SPECS = [spec for _, spec in declarations()]


def _between(text: str, start: str, end: str) -> str:
    head, found, rest = text.partition(start)
    assert found, f"marker {start!r} missing"
    body, found, _ = rest.partition(end)
    assert found, f"marker {end!r} missing"
    return body.split("\n", 1)[1]  # the rest of the start marker's line is its comment


def test_docs_table_is_the_declarations():
    docs = (ROOT / "docs" / "configuration.md").read_text()
    table = _between(docs, "<!-- settings table", "<!-- end of settings table")
    assert table == config.markdown_table(), (
        "docs/configuration.md is out of date: run scripts/settings_docs.py")


def test_readme_table_is_the_common_declarations_and_points_to_the_docs():
    readme = (ROOT / "README.md").read_text()
    table = _between(readme, "<!-- common settings", "<!-- end of common settings")
    assert table == config.readme_table(), (
        "README.md is out of date: run scripts/settings_docs.py")
    after = readme.split("<!-- end of common settings")[1]
    assert "docs/configuration.md" in after[:300]  # where the others are
    assert table.count("\n") >= 6  # the common ones, not an empty table


def test_every_setting_is_declared_once_with_a_description():
    names = [spec.env for spec in SPECS]
    assert len(names) == len(set(names))
    assert len(SPECS) == len(dataclasses.fields(Settings))
    for spec in SPECS:
        assert re.fullmatch(r"[A-Z][A-Z0-9_]+", spec.env)
        assert len(spec.doc) > 10 and spec.accepted and spec.default_text


def test_unset_and_empty_variables_give_the_declared_defaults():
    assert from_env({}) == Settings()
    assert from_env({spec.env: "" for spec in SPECS}) == Settings()


def _bounds(accepted: str) -> tuple[str, str] | None:
    found = re.fullmatch(r"([0-9.]+)-([0-9.]+)( s)?", accepted)
    return None if found is None else (found[1], found[2])


@pytest.mark.parametrize("spec", [s for s in SPECS if _bounds(s.accepted)],
                         ids=lambda s: s.env)
def test_numbers_are_refused_outside_their_bounds_naming_the_variable(spec):
    low, high = _bounds(spec.accepted)
    field = next(f.name for f, s in declarations() if s is spec)
    for good in (low, high):
        # Alone (only=): the rules across settings (max >= min) are not this test's business.
        assert str(getattr(from_env({spec.env: good}, only=(field,)), field)) in (good, f"{good}.0")
    for bad in ("x", "nan", str(float(low) - 1), str(float(high) * 2 + 1)):
        with pytest.raises(ConfigError) as refused:
            from_env({spec.env: bad})
        assert str(refused.value).startswith(spec.env + " must be"), str(refused.value)


def test_every_value_is_parsed_by_its_declared_type():
    settings = from_env({
        "DATABASE_URL": "postgresql://u@db/x", "SKYWIRE_DATA_DIR": "/srv/sky",
        "SKYWIRE_ENV": "development", "PORT": "8080", "SKYWIRE_BATCH_INTERVAL": "0.25",
        "SKYWIRE_RESET_CURSOR": "yes", "SKYWIRE_RELAY_URL": "ws://relay:1234",
    })
    assert settings.database_url == "postgresql://u@db/x"
    assert settings.data_dir == Path("/srv/sky")
    assert settings.port == 8080 and settings.batch_interval == 0.25
    assert settings.reset_cursor is True
    assert settings.subscribe_url == "ws://relay:1234/xrpc/com.atproto.sync.subscribeRepos"
    for env, bad in (("SKYWIRE_RESET_CURSOR", "maybe"), ("SKYWIRE_ENV", "staging"),
                     ("DATABASE_URL", "mysql://x"), ("HOST", "bad host!"),
                     ("SKYWIRE_RELAY_URL", "wss://")):
        with pytest.raises(ConfigError, match=f"^{env} must be"):
            from_env({env: bad})


def test_rules_across_settings_apply_only_when_both_are_read():
    with pytest.raises(ConfigError, match="SKYWIRE_BACKOFF_MAX"):
        from_env({"SKYWIRE_BACKOFF_MIN": "10", "SKYWIRE_BACKOFF_MAX": "5"})
    production = {"SKYWIRE_ENV": "production", "DATABASE_URL": "postgresql://u@db/x"}
    with pytest.raises(ConfigError, match="API_TOKEN_SALT"):
        from_env(production)
    # migrate and cursor do not read the salt, so production does not ask for it there
    assert from_env(production, only=config.DATABASE).environment == "production"
    with pytest.raises(ConfigError, match="DATABASE_URL must be set"):
        from_env({"SKYWIRE_ENV": "production"}, only=config.DATABASE)


def test_only_reads_the_named_settings():
    broken = {"DATABASE_URL": "mysql://x", "SKYWIRE_BATCH_SIZE": "0", "PORT": "8080"}
    with pytest.raises(ConfigError):
        from_env(broken)
    assert from_env(broken, only=("port",)) == Settings(port=8080)


def test_secrets_are_masked_in_the_config_output_and_repr():
    settings = from_env({"DATABASE_URL": "postgresql://u:pw@db/x", "API_TOKEN_SALT": "s" * 40})
    shown = settings.masked()
    assert shown["DATABASE_URL"] == "postgresql://u:********@db/x"
    assert shown["API_TOKEN_SALT"] == "********"
    assert list(shown) == [spec.env for spec in SPECS]
    assert "pw" not in repr(settings) and "s" * 40 not in repr(settings)


def test_only_config_reads_the_environment():
    readers = [path.relative_to(ROOT).as_posix()
               for path in (ROOT / "skywire_trio").rglob("*.py")
               if re.search(r"os\.environ|getenv\(", path.read_text())]
    assert readers == ["skywire_trio/config.py"]


def _clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("SKYWIRE_", "DATABASE_URL", "API_TOKEN_SALT", "HOST", "PORT"))}
    return {**env, **extra}


def test_config_command_prints_every_variable():
    env = _clean_env(SKYWIRE_BATCH_SIZE="77", DATABASE_URL="postgresql://u:pw@db/x")
    result = subprocess.run([sys.executable, "-m", "skywire_trio", "config"], env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    lines = dict(line.split(" = ", 1) for line in result.stdout.splitlines())
    assert list(lines) == [spec.env for spec in SPECS]
    assert lines["SKYWIRE_BATCH_SIZE"] == "77"
    assert lines["PORT"] == "4000  # default"
    assert lines["DATABASE_URL"] == "postgresql://u:********@db/x"


def test_commands_that_need_no_database_ignore_a_broken_database_url(tmp_path):
    env = _clean_env(DATABASE_URL="not a url", SKYWIRE_BATCH_SIZE="0")
    proc = subprocess.Popen([sys.executable, "-m", "skywire_trio", "replay",
                             str(_a_recording(tmp_path)), "--port", "0"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().startswith("ws://127.0.0.1:")
    finally:
        proc.terminate()
        proc.wait(10)
    # A command that does read DATABASE_URL still refuses it, before connecting anywhere.
    result = subprocess.run([sys.executable, "-m", "skywire_trio", "cursor", "show"], env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "configuration error: DATABASE_URL" in result.stderr


def test_a_token_scope_is_checked_before_any_database_is_touched():
    env = _clean_env(DATABASE_URL=f"postgresql://nobody@127.0.0.1:{free_port()}/none")
    result = subprocess.run([sys.executable, "-m", "skywire_trio", "tokens", "create", "t",
                             "--collection", "app.bsky.*", "--repo", "alice"], env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and result.stderr == "error: repo 'alice' is not valid\n"
    # The same rules as the API's filters, without the API.
    check_scope(["app.bsky.feed.post", "app.bsky.*"], ["commit"], ["did:plc:abc"])
    for scope, said in (((["not an nsid"], [], []), "collection 'not an nsid'"),
                        (([], ["post"], []), "event_type must be one of commit"),
                        (([], [], ["alice"]), "repo 'alice'"),
                        (([f"app.bsky.n{i}" for i in range(101)], [], []), "at most 100")):
        with pytest.raises(ValueError, match=f"^{re.escape(said)}"):
            check_scope(*scope)


def _a_recording(tmp_path: Path) -> Path:
    path = tmp_path / "one.bin"
    write_frames(path, [b"\xa2ah\x01"])
    return path
