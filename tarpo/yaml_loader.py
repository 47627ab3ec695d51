"""The one YAML loader for params files and `--set` values: YAML 1.2 scalars, no silent surprises.

Why not `yaml.safe_load`: PyYAML implements YAML 1.1, whose implicit types turn careless values into other
values without a word, and whose aliases let a 1 KB file expand to gigabytes. Departures, on purpose:
1. Scalars follow the YAML 1.2 core schema: only true/false are booleans (`yes`, `no`, `on`, `off` stay
   strings, so `model.preset: on` is the preset "on", not True); `1e-5` is a float; `012` is 12 (not octal 10);
   `1:30` and `2026-01-01` stay strings (not 90 and a date).
2. A key repeated in one mapping is refused with the lines of both (1.1 keeps the last one, silently).
3. Aliases may be used, but the document they expand to is bounded (MAX_VALUES) and may not contain itself:
   a "billion laughs" file is refused in milliseconds instead of exhausting memory in pydantic.
4. An integer too long to convert (Python refuses more than 4300 digits) is refused with its line.
Every refusal is a `yaml.YAMLError` with `problem` and `problem_mark`, like PyYAML's own syntax errors.
"""

from __future__ import annotations

import re
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

MAX_VALUES = 100_000    # scalars + collections after alias expansion; params.yaml holds about 200
MERGE_TAG = "tag:yaml.org,2002:merge"


class YamlRefused(yaml.MarkedYAMLError):
    """Valid YAML syntax that we refuse to load (duplicate key, alias bomb, recursive alias, huge number)."""

    def __init__(self, problem: str, mark):
        super().__init__(problem=problem, problem_mark=mark)


class _Loader(yaml.SafeLoader):
    """SafeLoader with the YAML 1.2 core schema's implicit scalars and the refusals of the module docstring."""

    def construct_mapping(self, node: Node, deep: bool = False) -> dict:
        if isinstance(node, MappingNode):
            _check_duplicate_keys(node)
        return super().construct_mapping(node, deep=deep)


_REPLACED = {"tag:yaml.org,2002:bool", "tag:yaml.org,2002:int", "tag:yaml.org,2002:float",
             "tag:yaml.org,2002:timestamp"}
_Loader.yaml_implicit_resolvers = {first: [(tag, rx) for tag, rx in pairs if tag not in _REPLACED]
                                   for first, pairs in yaml.SafeLoader.yaml_implicit_resolvers.items()}
_Loader.add_implicit_resolver("tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
                              list("tTfF"))
_Loader.add_implicit_resolver("tag:yaml.org,2002:int", re.compile(r"^(?:[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+)$"),
                              list("-+0123456789"))
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"),
    list("-+0123456789."))


def _construct_int(loader: _Loader, node: ScalarNode) -> int:
    """YAML 1.2 integers: decimal (leading zeros allowed, not octal), 0o octal, 0x hex."""
    text = loader.construct_scalar(node).replace("_", "")
    try:
        if text.startswith(("0o", "0x")):
            return int(text[2:], 8 if text[1] == "o" else 16)
        return int(text, 10)
    except ValueError:  # more digits than Python converts (4300), or an explicit !!int on a non-number
        raise YamlRefused(f"{text[:12]}... ({len(text)} characters) is not a usable integer", node.start_mark) from None


_Loader.add_constructor("tag:yaml.org,2002:int", _construct_int)


def _check_duplicate_keys(node: MappingNode) -> None:
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        if not isinstance(key_node, ScalarNode) or key_node.tag == MERGE_TAG:
            continue  # `<<: *base` merges are meant to be overridden by the keys beside them
        line = key_node.start_mark.line + 1
        if key_node.value in seen:
            raise YamlRefused(f"duplicate key {key_node.value!r} (first at line {seen[key_node.value]}); YAML would "
                              "silently keep only the last one: delete one of them", key_node.start_mark)
        seen[key_node.value] = line


def _check_expansion(root: Node) -> None:
    """Refuse a node graph that contains itself or expands (aliases copied out) to more than MAX_VALUES nodes."""
    sizes: dict[int, int] = {}
    open_nodes: set[int] = set()

    def size(node: Node) -> int:
        if id(node) in sizes:
            return sizes[id(node)]
        if id(node) in open_nodes:
            raise YamlRefused("an alias refers to a node that contains it (a recursive structure); write the "
                              "values out", node.start_mark)
        open_nodes.add(id(node))
        children = ([n for pair in node.value for n in pair] if isinstance(node, MappingNode)
                    else node.value if isinstance(node, SequenceNode) else [])
        total = 1
        for child in children:
            total += size(child)
            if total > MAX_VALUES:
                raise YamlRefused(f"aliases expand this document to more than {MAX_VALUES} values (an alias "
                                  "bomb?); write the values out instead of nesting aliases", node.start_mark)
        open_nodes.discard(id(node))
        sizes[id(node)] = total
        return total

    size(root)


def load_yaml(text: str) -> Any:
    """The one YAML document in `text` (None when empty); yaml.YAMLError (with a mark) for anything refused."""
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _check_expansion(node)
        return loader.construct_document(node)
    except RecursionError:  # thousands of nested brackets: PyYAML's composer recurses per level
        raise YamlRefused("nested too deeply (thousands of levels); params need a few", None) from None
    finally:
        loader.dispose()
