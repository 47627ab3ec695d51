"""Rewrite the .py code deps of every dvc.yaml stage to exactly the modules its command imports.

    python scripts/sync_dvc_deps.py      # from the repo root, after adding or removing an import

tests/test_dvc_yaml.py computes the same list (its `repo_imports`) and fails when dvc.yaml drifts from it.
"""
import re, sys
from pathlib import Path
sys.path.insert(0, ".")
from tests.test_dvc_yaml import CLI_IMPORTS, repo_imports
import yaml
text = Path("dvc.yaml").read_text()
stages = yaml.safe_load(text)["stages"]
out = []
for block in re.split(r"(?m)^(?=  \w+:\n    cmd:)", text):
    m = re.match(r"  (\w+):\n", block)
    if m and m.group(1) in stages:
        stage = m.group(1)
        expected = sorted(repo_imports([f"pipeline/{stage}.py", "tarpo/config.py", *CLI_IMPORTS.get(stage, [])]) | {"cli.py"})
        dm = re.search(r"    deps:\n((?:      - .*\n)+)", block)
        lines = dm.group(1).splitlines(keepends=True)
        others = [l for l in lines if not l.strip().removeprefix("- ").endswith(".py")]
        # cli.py first, then sorted modules, then the non-code deps in their order
        code = ["      - cli.py\n"] + [f"      - {d}\n" for d in expected if d != "cli.py"]
        block = block[:dm.start(1)] + "".join(code + others) + block[dm.end(1):]
    out.append(block)
Path("dvc.yaml").write_text("".join(out))
