"""Rewrite the settings tables in docs/configuration.md and README.md from config.py.

    .venv/bin/python scripts/settings_docs.py

The tables sit between marker comments; tests/test_config.py fails while they differ from
what ``python -m skywire_trio config --markdown [common]`` prints.
"""

from __future__ import annotations

from pathlib import Path

from skywire_trio import config

ROOT = Path(__file__).resolve().parents[1]
TABLES = (
    (ROOT / "docs" / "configuration.md", "<!-- settings table", "<!-- end of settings table",
     config.markdown_table),
    (ROOT / "README.md", "<!-- common settings", "<!-- end of common settings",
     config.readme_table),
)


def main() -> None:
    """Replace each table's body, keeping the marker lines."""
    for path, start, end, table in TABLES:
        text = path.read_text()
        head, _, rest = text.partition(start)
        marker, _, rest = rest.partition("\n")
        _, _, tail = rest.partition(end)
        path.write_text(f"{head}{start}{marker}\n{table()}{end}{tail}")
        print(f"updated {path.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
