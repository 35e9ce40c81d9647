"""Count lines of code: what an integration costs, measured rather than estimated.

A line counts when it is code: not blank, not only a comment, not part of a
docstring. In a notebook we count the code cells tagged ``integration``: the
cells that connect the library to Ray, as opposed to the model, the data and
the checks. In a library we count its module for Ray, the runtime code only:
its tests and examples are left out. That module is what the article calls a
library's "lines of integration"; the tagged cells are the reader's glue.
"""

from __future__ import annotations

import ast
import importlib.util
import re
from pathlib import Path

import nbformat

INTEGRATION_TAG = "integration"

# What an integration asks of Ray, recognised by the names of the Ray APIs its code
# calls.
RAY_FEATURES = {
    "tasks": re.compile(
        r"@ray\.remote\b[^\n]*\n\s*(async\s+)?def\s|\bray\.remote\([^)]*\)\(\s*[a-z_]"
        r"|\bray\.remote\(\s*[a-z_]\w*\s*\)"
    ),
    "actors": re.compile(
        r"@ray\.remote\b[^\n]*\n\s*class\s|\bray\.remote\([^)]*\)\(\s*[A-Z_]"
        r"|\bray\.remote\(\s*[A-Z_]\w*\s*\)|\bActorPool\b|\bray\.get_actor\("
    ),
    "placement groups": re.compile(
        r"\bplacement_group\(|\bPlacementGroupSchedulingStrategy\b"
    ),
    "object store": re.compile(r"\bray\.put\(|\bObjectRef\b"),
    # Since the article (see the part "Ray since the article"):
    "collective groups": re.compile(r"\b(create|init)_collective_group\("),
    "direct transport": re.compile(r"\btensor_transport="),
    "compiled graphs": re.compile(r"\.experimental_compile\("),
}


def code_lines(source: str) -> int:
    """Lines of Python in ``source`` that are not blank, only a comment, or in a
    docstring."""
    docstrings = docstring_lines(source)
    return sum(
        1
        for number, line in enumerate(source.splitlines(), start=1)
        if line.strip()
        and not line.strip().startswith("#")
        and number not in docstrings
    )


def docstring_lines(source: str) -> set[int]:
    """The numbers of the lines that hold a module's, class's or function's docstring.

    None for source that is not plain Python (a notebook cell with IPython syntax, say):
    an empty set.
    """
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return set()
    found: set[int] = set()
    for node in ast.walk(tree):
        if (
            isinstance(
                node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)
            )
            and node.body
        ):
            first = node.body[0]
            is_text = isinstance(first, ast.Expr) and isinstance(
                first.value, ast.Constant
            )
            if is_text and isinstance(first.value.value, str):
                found.update(range(first.lineno, first.end_lineno + 1))
    return found


def integration_cells(notebook: str | Path) -> list[str]:
    """The code of each of the notebook's cells tagged ``integration``."""
    cells = nbformat.read(notebook, as_version=4).cells
    tagged = [
        c.source
        for c in cells
        if c.cell_type == "code" and INTEGRATION_TAG in c.metadata.get("tags", [])
    ]
    if not tagged:
        raise ValueError(f"{notebook} has no code cell tagged {INTEGRATION_TAG!r}")
    return tagged


def integration_source(notebook: str | Path) -> str:
    """The code of the notebook's cells tagged ``integration``, joined."""
    return "\n".join(integration_cells(notebook))


def integration_lines(notebook: str | Path) -> int:
    """Lines of code in the notebook's cells tagged ``integration``, counted cell by
    cell."""
    return sum(code_lines(cell) for cell in integration_cells(notebook))


# Folders and files of a package that are not what it runs.
NOT_RUNTIME_FOLDERS = {"tests", "test", "examples", "benchmarks"}


def package_files(module: str) -> list[Path]:
    """The runtime Python files of an installed module or package: its tests and
    examples left out."""
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        raise ModuleNotFoundError(f"{module} is not installed")
    origin = Path(spec.origin)
    if origin.name != "__init__.py":
        return [origin]
    return [
        path
        for path in sorted(origin.parent.rglob("*.py"))
        if not NOT_RUNTIME_FOLDERS & set(path.relative_to(origin.parent).parts[:-1])
        and not path.name.startswith("test_")
        and path.name != "conftest.py"
    ]


def package_source(module: str) -> str:
    """The runtime Python source of an installed module or package (see
    :func:`package_files`), joined."""
    return "\n".join(path.read_text(encoding="utf-8") for path in package_files(module))


def package_lines(module: str) -> int:
    """Lines of code in an installed module or package's runtime files, counted file by
    file."""
    return sum(
        code_lines(path.read_text(encoding="utf-8")) for path in package_files(module)
    )


def ray_features(source: str) -> list[str]:
    """The Ray features (tasks, actors, placement groups, object store, ...) that
    ``source`` calls by name."""
    return [
        feature for feature, pattern in RAY_FEATURES.items() if pattern.search(source)
    ]


# The book's one list of its integrations, beside the notebooks.
INTEGRATIONS_FILE = "integrations.yml"


def integrations(notebooks: str | Path) -> list[dict]:
    """Every integration the book shows, as ``notebooks/integrations.yml`` lists them:
    name, notebook, level, the library's module for Ray (or None), the Ray features
    it uses, and what a scan of the code cannot see."""
    import yaml

    return yaml.safe_load((Path(notebooks) / INTEGRATIONS_FILE).read_text())


def integration_table(level: int, notebooks: str | Path):
    """What each integration of one level costs, for that level's page: our tagged
    lines, and the lines of the library's module for Ray (those of the part "Ray
    since the article" left out)."""
    import pandas as pd

    rows = [
        (
            entry["name"],
            integration_lines(Path(notebooks) / f"{entry['notebook']}.ipynb"),
            entry["module"] or "(none: our code is all of it)",
            package_lines(entry["module"]) if entry["module"] else 0,
        )
        for entry in integrations(notebooks)
        if entry["level"] == level and not entry.get("since_the_article")
    ]
    columns = ["integration", "our lines", "library's module for Ray", "its lines"]
    return pd.DataFrame(rows, columns=columns).set_index("integration")


def plot_integration_table(table, level: str) -> None:
    """Stacked bars: our lines, then the library's module's lines."""
    from helpers.plots import figure

    ax = figure(
        f"{level}: lines of code that connect each library to Ray",
        "lines of code",
        "integration",
    )
    ax.barh(table.index, table["our lines"], label="ours, in the notebook")
    ax.barh(
        table.index,
        table["its lines"],
        left=table["our lines"],
        label="the library's Ray module",
    )
    ax.invert_yaxis()
    ax.legend()
