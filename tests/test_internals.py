"""Ray's private and experimental APIs are used in one module, helpers/internals.py, and
each still exists in the installed Ray: an upgrade that moves one fails here, by
name."""

from __future__ import annotations

import importlib
import io
import json
import re
import tokenize

import pytest
import ray
from conftest import ROOT

# What helpers/internals.py reaches for, as it reaches for it.
USED = [
    "ray._private.ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR",
    "ray._private.internal_api.get_memory_info_reply",
    "ray._private.internal_api.get_state_from_address",
    "ray._private.internal_api.memory_summary",
    "ray._private.internal_api.node_stats",
    "ray._private.state.GlobalState._initialize_global_state",
    "ray._private.worker.global_worker",
    "ray._raylet.CoreWorker.get_all_reference_counts",
    "ray._raylet.AuthenticationMode.TOKEN",
    "ray._raylet.AuthenticationTokenLoader.instance",
    "ray._raylet.Config.initialize",
    "ray._raylet.GcsClientOptions.create",
    "ray._raylet.get_authentication_mode",
    "ray.experimental.get_object_locations",
    "ray._private.ray_perf.Actor",
    "ray._private.ray_microbenchmark_helpers.timeit",
]
PRIVATE = re.compile(
    r"ray\._private|ray\._raylet|global_worker|core_worker|ray\.experimental"
    r"|\._jsc\b"  # Spark's Java handle
    r"|\._to_pandas\b|\._query_compiler\b"  # Modin's private conversions
)
# Chapters whose subject is an experimental API call it by name (and so do their
# controls).
SUBJECT = re.compile(r"ray\.experimental\.(collective|wait_tensor_freed)\b")
SUBJECT_ALLOWED_IN = {
    "60_collectives.ipynb",
    "61_direct_transport.ipynb",
    "test_controls.py",
}


def resolve(dotted: str) -> object:
    parts = dotted.split(".")
    for split in range(len(parts), 0, -1):
        try:
            found = importlib.import_module(".".join(parts[:split]))
        except ImportError:
            continue
        for attribute in parts[split:]:
            found = getattr(found, attribute)
        return found
    raise ImportError(dotted)


@pytest.mark.parametrize("name", USED)
def test_each_private_api_the_book_uses_is_still_there(name):
    try:
        resolve(name)
    except (ImportError, AttributeError):
        pytest.fail(
            f"Ray {ray.__version__} has no {name} "
            "(helpers/internals.py was checked against 2.60.0): "
            "find where it moved, or another way, there",
            pytrace=False,
        )


def test_the_internals_module_imports():
    from helpers import internals

    assert internals.CHECKED_AGAINST == "2.60.0"


def code_without_comments_or_strings(source: str) -> str:
    tokens = tokenize.generate_tokens(io.StringIO(source).readline)
    code = " ".join(
        t.string for t in tokens if t.type not in (tokenize.COMMENT, tokenize.STRING)
    )
    return re.sub(
        r"\s*\.\s*", ".", code
    )  # the tokens joined: "ray . _private" is ray._private


def sources() -> list[tuple[str, str]]:
    found = [
        (path.name, path.read_text())
        for folder in ("src", "tests", "benchmarks")
        for path in sorted((ROOT / folder).rglob("*.py"))
        if path.name not in ("internals.py", "test_internals.py")
    ]
    for notebook in sorted((ROOT / "notebooks").glob("*.ipynb")):
        cells = json.loads(notebook.read_text())["cells"]
        code = "\n".join(
            "".join(c["source"]) for c in cells if c["cell_type"] == "code"
        )
        found.append((notebook.name, code))
    return found


def test_nothing_else_reaches_into_ray_internals():
    reaching = {}
    for name, source in sources():
        code = code_without_comments_or_strings(source)
        if name in SUBJECT_ALLOWED_IN:
            code = SUBJECT.sub("", code)
        if found := sorted(set(PRIVATE.findall(code))):
            reaching[name] = found
    assert not reaching, f"use these through helpers/internals.py: {reaching}"
