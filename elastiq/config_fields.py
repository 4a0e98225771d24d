"""How the config dataclasses show outside Python: field docstrings and flag names.

Where it sits: the base layer, shared by the command line (elastiq/cli/flags.py builds
every flag and its help from these) and the Kubernetes operator (kube/openapi.py turns
the docstrings into the CRD's descriptions; kube/resources.py writes the controller's
flags with `flag_name`), so a field is documented and named once.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import inspect
import itertools
import textwrap


@functools.cache
def field_docs(cls: type) -> dict[str, str]:
    """{field: docstring} of a dataclass (and its dataclass bases), from the string
    literal that follows each field in the class's source; whitespace collapsed."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        except (OSError, TypeError):
            continue
        body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
        for node, after in itertools.pairwise(body):
            if (
                isinstance(node, ast.AnnAssign)
                and isinstance(node.target, ast.Name)
                and isinstance(after, ast.Expr)
                and isinstance(after.value, ast.Constant)
                and isinstance(after.value.value, str)
            ):
                docs[node.target.id] = " ".join(after.value.value.split())
    return docs


def flag_name(field: str) -> str:
    """A field's command-line flag: dashes, a trailing `_s` (seconds) dropped
    (`step_delay_s` -> `--step-delay`)."""
    name = field.removesuffix("_s") if field.endswith("_s") else field
    return "--" + name.replace("_", "-")
