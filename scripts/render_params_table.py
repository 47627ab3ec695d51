"""Rewrite the generated blocks of README.md: params and recipes tables (from the code) and the results section
(from the committed metrics/eval.json and studies/*/study.json).

Usage: python scripts/render_params_table.py [--check]   (--check: exit 1 if README.md is out of date)
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pipeline.study import readme_results  # noqa: E402
from tarpo.config import params_table_markdown  # noqa: E402
from tarpo.recipes import recipes_table_markdown  # noqa: E402

START, END = "<!-- params-table:start -->", "<!-- params-table:end -->"
BLOCKS = {"params-table": params_table_markdown, "recipes-table": recipes_table_markdown,
          "results": lambda: readme_results(ROOT)}


def _replace(text: str, name: str, table: str) -> str:
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    head, found_start, rest = text.partition(start)
    _, found_end, tail = rest.partition(end)
    if not found_start or not found_end:
        raise ValueError(f"README.md lacks the markers {start} ... {end}")
    return f"{head}{start}\n{table}{end}{tail}"


def render(readme_text: str) -> str:
    """README text with each generated block (params, recipes) replaced by the current table."""
    for name, make in BLOCKS.items():
        readme_text = _replace(readme_text, name, make())
    return readme_text


def main(argv: list[str]) -> int:
    readme = ROOT / "README.md"
    current = readme.read_text(encoding="utf-8")
    wanted = render(current)
    if "--check" in argv:
        if current != wanted:
            print("README.md tables are out of date: run python scripts/render_params_table.py", file=sys.stderr)
            return 1
        return 0
    if current != wanted:
        readme.write_text(wanted, encoding="utf-8")
        print("README.md tables updated")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
