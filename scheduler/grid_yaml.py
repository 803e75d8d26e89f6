"""Reading grid.yaml: a SafeLoader that refuses duplicate keys and reads numbers as people
write them, and the (line, column) of every node for error messages.

PyYAML implements YAML 1.1, whose floats need a dot and a signed exponent: `1e-3`, `5e-4`,
`1E-3` and `2e5` are strings there, which strict validation then refuses (`lr: [1e-3]`).
`GridLoader` adds the YAML 1.2 core-schema float form (`[-+]?(.N|N(.N*)?)([eE][-+]?N)?`)
after the built-in resolvers, so ints stay ints and `1e-3`, `1E-3`, `5e-4`, `.5`,
`1.5e+3`, `-2e-4` are floats. Nothing else about YAML 1.1 changes (`yes` is still a bool).
"""

from __future__ import annotations

import re
from typing import Any

import yaml

Marks = dict[tuple, tuple[int, int]]

# YAML 1.2 core schema floats (https://yaml.org/spec/1.2.2/#1032-tag-resolution), minus
# the infinities and NaNs the YAML 1.1 resolver already reads. A plain int also matches:
# the int resolver comes first, so it keeps its tag.
FLOAT_12 = re.compile(r"^[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?$")


class GridLoader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses a mapping with the same key twice (PyYAML keeps the
    last one silently) and reads YAML 1.2 floats (`1e-3`) as floats."""


def _unique_mapping(loader: GridLoader, node: yaml.MappingNode, deep: bool = False):
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        try:
            line = seen.get(key)
        except TypeError:  # an unhashable key: the constructor reports it
            continue
        if line is not None:
            raise yaml.constructor.ConstructorError(
                None,
                None,
                f"duplicate key {key!r}: first at line {line}, again at line "
                f"{key_node.start_mark.line + 1}",
                key_node.start_mark,
            )
        seen[key] = key_node.start_mark.line + 1
    return loader.construct_mapping(node, deep=deep)


GridLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _unique_mapping)
# add_implicit_resolver copies the inherited table first: yaml.SafeLoader is unchanged.
GridLoader.add_implicit_resolver("tag:yaml.org,2002:float", FLOAT_12, list("-+.0123456789"))


def read_yaml(text: str) -> Any:
    """The data of a grid file's text (raises yaml.YAMLError, RecursionError)."""
    return yaml.load(text, Loader=GridLoader)  # a SafeLoader subclass: no Python objects


def yaml_marks(text: str, max_nodes: int = 100_000) -> Marks:
    """(line, column), 1-based, of every key and value in a YAML text, by path: a mapping
    value at ("grid", "lr"), a list item at ("grid", "lr", 2), and the key itself at
    ("grid", "lr", "<key>"). Each node is visited once (an alias bomb costs nothing)."""
    out: Marks = {}
    root = yaml.compose(text, Loader=yaml.SafeLoader)
    stack: list[tuple[tuple, Any]] = [((), root)] if root is not None else []
    seen: set[int] = set()
    while stack and len(seen) < max_nodes:
        path, node = stack.pop()
        out.setdefault(path, (node.start_mark.line + 1, node.start_mark.column + 1))
        if id(node) in seen:
            continue
        seen.add(id(node))
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                key = k.value if isinstance(k, yaml.ScalarNode) else None
                if key is not None:
                    out.setdefault(
                        (*path, key, "<key>"), (k.start_mark.line + 1, k.start_mark.column + 1)
                    )
                    stack.append(((*path, key), v))
        elif isinstance(node, yaml.SequenceNode):
            stack.extend(((*path, i), v) for i, v in enumerate(node.value))
    return out
