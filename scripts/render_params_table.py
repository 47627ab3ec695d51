"""Rewrite the params table in README.md from the pydantic field descriptions (so docs never drift).

Usage: python scripts/render_params_table.py [--check]   (--check: exit 1 if README.md is out of date)
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tarpo.config import params_table_markdown  # noqa: E402

START, END = "<!-- params-table:start -->", "<!-- params-table:end -->"


def render(readme_text: str) -> str:
    """README text with the block between the markers replaced by the current table."""
    head, start, rest = readme_text.partition(START)
    _, end, tail = rest.partition(END)
    if not start or not end:
        raise ValueError(f"README.md lacks the markers {START} ... {END}")
    return f"{head}{START}\n{params_table_markdown()}{END}{tail}"


def main(argv: list[str]) -> int:
    readme = ROOT / "README.md"
    current = readme.read_text(encoding="utf-8")
    wanted = render(current)
    if "--check" in argv:
        if current != wanted:
            print("README.md params table is out of date: run python scripts/render_params_table.py", file=sys.stderr)
            return 1
        return 0
    if current != wanted:
        readme.write_text(wanted, encoding="utf-8")
        print("README.md params table updated")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
