"""docs/ARCHITECTURE.md against the code: module tables, signatures, no pointers outside the repo; doctests run."""

import ast
import configparser
import importlib
import inspect
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ARCHITECTURE = (ROOT / "docs" / "ARCHITECTURE.md").read_text()
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "bench" / "README.md"]


def table_modules(package: str) -> set[str]:
    return set(re.findall(rf"^\| `({package}/\w+\.py)` \|", ARCHITECTURE, flags=re.M))


@pytest.mark.parametrize("package", ["tarpo", "pipeline"])
def test_every_module_is_described_once(package):
    files = {f"{package}/{p.name}" for p in (ROOT / package).glob("*.py")}
    listed = table_modules(package)
    assert not files - listed, f"docs/ARCHITECTURE.md: add one line for {sorted(files - listed)}"
    assert not listed - files, f"docs/ARCHITECTURE.md: {sorted(listed - files)} no longer exist"
    rows = re.findall(rf"^\| `{package}/\w+\.py` \| (.*) \|$", ARCHITECTURE, flags=re.M)
    assert all(len(row.strip()) > 10 for row in rows)


# modules tested through others' test files, and where
TESTED_ELSEWHERE = {
    "config_load": "tests/test_config.py",
    "model_info": "tests/test_config.py, tests/test_models.py",
    "factory": "tests/test_serving.py, tests/test_register.py, tests/test_pipeline_base.py (load_policy)",
    "pyfunc_model": "tests/test_serving.py (MLflow runs it when a registered model loads)",
    "yaml_loader": "tests/e2e/test_hostile_inputs.py (hostile params files through the CLI)",
}


def test_every_module_has_its_own_test_file():
    """Tests mirror modules: a split-off module takes its tests along instead of being tested through a re-export."""
    modules = {p.stem for p in (ROOT / "tarpo").glob("*.py")} - {"__init__"}
    missing = sorted(m for m in modules if not (ROOT / "tests" / f"test_{m}.py").is_file())
    assert [m for m in missing if m not in TESTED_ELSEWHERE] == []


def documented_signatures():
    """(module, dotted name, ast.arguments) for every `def`/`class` line in the python blocks, by section."""
    found = []
    for section, body in re.findall(r"^### (tarpo/\w+)\.py\n```python\n(.*?)```", ARCHITECTURE, flags=re.M | re.S):
        module = section.replace("/", ".")
        for line in body.splitlines():
            match = re.match(r"(def|class) ([\w.]+)\((.*)\)", line.split("  #")[0].strip())
            if match:
                tree = ast.parse(f"def f({match.group(3)}): pass")
                found.append((module, match.group(2), tree.body[0].args))
    return found


SIGNATURES = documented_signatures()


def doc_params(args: ast.arguments):
    params = [(a.arg, "positional") for a in [*args.posonlyargs, *args.args]]
    params += [("*" + args.vararg.arg, "var")] if args.vararg else []
    params += [(a.arg, "keyword") for a in args.kwonlyargs]
    params += [("**" + args.kwarg.arg, "var")] if args.kwarg else []
    defaults = dict(zip([a.arg for a in [*args.posonlyargs, *args.args]][::-1], args.defaults[::-1]))
    defaults.update({a.arg: d for a, d in zip(args.kwonlyargs, args.kw_defaults) if d is not None})
    return [p for p in params if p[0] not in ("self", "cls")], defaults


def code_params(obj):
    kinds = {inspect.Parameter.KEYWORD_ONLY: "keyword", inspect.Parameter.VAR_POSITIONAL: "var",
             inspect.Parameter.VAR_KEYWORD: "var"}
    params = []
    for p in inspect.signature(obj).parameters.values():
        name = {"VAR_POSITIONAL": "*", "VAR_KEYWORD": "**"}.get(p.kind.name, "") + p.name
        params.append((name, kinds.get(p.kind, "positional")))
    return [p for p in params if p[0] not in ("self", "cls")], inspect.signature(obj).parameters


def test_signature_blocks_are_found():
    assert len(SIGNATURES) >= 35 and {m for m, _, _ in SIGNATURES} >= {"tarpo.rollout", "tarpo.objective"}


@pytest.mark.parametrize("module,name,args", SIGNATURES, ids=[f"{m}.{n}" for m, n, _ in SIGNATURES])
def test_documented_signature_matches_code(module, name, args):
    obj = importlib.import_module(module)
    for part in name.split("."):
        obj = getattr(obj, part)
    documented, doc_defaults = doc_params(args)
    actual, parameters = code_params(obj)
    assert documented == actual, f"docs/ARCHITECTURE.md {module}.{name}: documented {documented}, code {actual}"
    for param, default in doc_defaults.items():
        try:
            value = ast.literal_eval(default)
        except ValueError:
            continue  # a name: not compared
        if value is Ellipsis:
            continue  # `...`: not compared
        assert parameters[param].default == value, f"{module}.{name}: default of {param}"


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_docs_point_only_inside_the_repo(doc):
    text = doc.read_text()
    assert "../" not in text and "/work/" not in text, f"{doc.name} points outside the repository"
    for path in set(re.findall(r"\b((?:tarpo|pipeline|tests|bench|scripts|docs)/[\w/.-]+\.(?:py|md|png))", text)):
        assert (ROOT / path).exists(), f"{doc.name} names {path}, which does not exist"


# documents only a reviewer has, and the codes of the reference's bug (B1-B17) and weakness (W1-W15) lists in one
# of them; a batch name such as B64 or a dtype such as bf16 is not one
OUTSIDE_DOCUMENTS = re.compile(r"DESIGN\.md|tarpo-reference|peers\.md|gpu-anchors|\bB(?:1[0-7]|[1-9])\b|\bW(?:1[0-5]|[1-9])\b")
CODE = [p for d in ("tarpo", "pipeline", "bench", "scripts", "tests", "examples") for p in sorted((ROOT / d).rglob("*.py"))
        if p.name != "test_docs.py"] + [ROOT / "cli.py"]


def test_code_cites_no_document_outside_the_repo():
    """Docstrings and comments say their point themselves: a reader of the repository has no other document."""
    import io
    import tokenize

    found = []
    for path in CODE:
        for token in tokenize.generate_tokens(io.StringIO(path.read_text()).readline):
            if token.type in (tokenize.COMMENT, tokenize.STRING) and OUTSIDE_DOCUMENTS.search(token.string):
                found.append(f"{path.relative_to(ROOT)}:{token.start[0]}: {OUTSIDE_DOCUMENTS.search(token.string)[0]}")
    for doc in DOCS:
        found += [f"{doc.relative_to(ROOT)}: {m[0]}" for m in OUTSIDE_DOCUMENTS.finditer(doc.read_text())]
    assert found == []


def test_pytest_collects_every_doctest():
    config = configparser.ConfigParser()
    config.read(ROOT / "pytest.ini")
    assert "--doctest-modules" in config["pytest"]["addopts"].split()
    with_examples = {p.parent.name for p in [*ROOT.glob("tarpo/*.py"), *ROOT.glob("pipeline/*.py")]
                     if ">>>" in p.read_text()}
    assert with_examples <= set(config["pytest"]["testpaths"].split())
