"""The small helpers: results, timing, plots, GPU detection, networks, the notebook
runner."""

from __future__ import annotations

import ast
import json
import socket
import time
import warnings
from pathlib import Path

import nbformat
import numpy as np
import pytest
from conftest import toc_notebooks as book_notebooks

import helpers
from booktools.extension import RecordRenderer, public_repository_url
from booktools.ledger import Chapter, central_claims, toc_notebooks
from booktools.lines import (
    code_lines,
    integration_lines,
    package_files,
    package_lines,
    ray_features,
)
from booktools.run import (
    MissingKernel,
    NotebookFailed,
    UnknownParameter,
    declared_parameters,
    execute,
    main,
)
from helpers import checks, gpu, results, traffic
from helpers.isolated import run_isolated, unavailable_reason
from helpers.network import exposed, is_loopback, listening_addresses
from helpers.traffic import Carried, parse_ss, plot_bytes_carried


def test_measure_prints_outside_a_notebook(capsys):
    helpers.measure("latency", 1.5, "ms")
    assert "latency = 1.5 ms" in capsys.readouterr().out


def test_measure_refuses_a_non_number():
    with pytest.raises(ValueError, match="not a finite number"):
        helpers.measure("broken", float("nan"), "s")


def test_a_false_claim_raises_with_its_detail():
    helpers.claim("fine", True, "1 == 1")
    with pytest.raises(helpers.ClaimFailed, match="nodes: 1 of 3"):
        helpers.claim("nodes", False, "1 of 3")


@pytest.mark.parametrize("not_a_bool", [[1], 1, None, "yes"])
def test_a_claim_refuses_anything_but_a_bool(not_a_bool):
    with pytest.raises(TypeError, match="must be a bool"):
        helpers.claim("truthy", not_a_bool, "")
    helpers.claim("numpy's bool is a bool", np.array([1, 2]).all(), "")


def test_a_run_must_account_for_every_declared_claim():
    declared = {
        "checked": {"fails_if": "..."},
        "skipped": {"fails_if": "..."},
        "forgotten": {"fails_if": "..."},
    }
    records = [
        {"kind": "claim", "name": "checked", "holds": True, "detail": ""},
        {"kind": "not checked", "name": "skipped", "because": "no GPU"},
        {"kind": "claim", "name": "undeclared", "holds": True, "detail": ""},
        {"kind": "claim", "name": "undeclared", "holds": True, "detail": ""},
    ]
    assert results.unaccounted_claims(declared, records) == {
        "declared, not accounted for": ["forgotten"],
        "made, not declared": ["undeclared", "undeclared"],
        "made twice": ["undeclared"],
    }
    with pytest.raises(ValueError, match="say why"):
        helpers.not_checked("skipped", "")


def test_every_notebook_declares_what_would_make_each_claim_fail():
    for notebook in book_notebooks():
        declared = results.declared_claims(nbformat.read(notebook, as_version=4))
        assert declared, f"{notebook.name} declares no claim"
        vague = [
            name for name, d in declared.items() if len(d.get("fails_if", "")) < 15
        ]
        assert not vague, f"{notebook.name}: no 'fails_if' for {vague}"


def test_claims_are_grouped_by_what_they_show_about_the_level():
    notebook = {
        "metadata": {
            "ray_library_patterns": {
                "claims": {
                    "in the store": {"fails_if": "...", "shows": "data in the store"},
                    "sums": {"fails_if": "..."},
                    "over Gloo": {"fails_if": "...", "shows": "its own wire"},
                }
            }
        }
    }
    assert results.claims_showing(notebook) == {
        "data in the store": ["in the store"],
        "its own wire": ["over Gloo"],
    }
    notebook["metadata"]["ray_library_patterns"]["claims"]["sums"]["shows"] = "speed"
    with pytest.raises(ValueError, match="'sums' shows 'speed'"):
        results.claims_showing(notebook)


def test_every_chapter_of_a_level_has_a_claim_that_shows_its_level():
    # 40_choosing_the_level answers the decision guide from these, so a chapter without
    # one (or with a mistyped one) would leave the guide without its evidence.
    for notebook in book_notebooks():
        if notebook.stem[0] in "1236":
            shown = results.claims_showing(nbformat.read(notebook, as_version=4))
            assert set(shown) - {"a hand-off through the store"}, (
                f"{notebook.name}: no claim shows its level"
            )


CONTROL_TESTS = {
    node.name
    for node in ast.parse((Path(__file__).parent / "test_controls.py").read_text()).body
    if isinstance(node, ast.FunctionDef)
}


@pytest.mark.parametrize("notebook", book_notebooks(), ids=lambda p: p.stem)
def test_each_chapter_names_the_negative_control_of_its_central_claim(notebook):
    declared = results.declared_claims(nbformat.read(notebook, as_version=4))
    controls = {
        name: d["negative_control"]
        for name, d in declared.items()
        if "negative_control" in d
    }
    assert len(controls) == 1, (
        f"{notebook.name}: one central claim with a negative control, not {controls}"
    )
    [(central, control)] = controls.items()
    # Either a test of tests/test_controls.py, or another claim of the chapter that runs
    # the central check with the mechanism off.
    if control.startswith("claim: "):
        exists = control.removeprefix("claim: ") in declared
    else:
        path, _, test = control.partition("::")
        exists = path == "tests/test_controls.py" and test in CONTROL_TESTS
    assert exists, (
        f"{notebook.name}: {central!r} names the control {control!r}, "
        "which does not exist"
    )


def test_records_are_read_back_from_outputs():
    record = {"kind": "claim", "name": "x", "holds": True, "detail": "d"}
    notebook = {
        "cells": [
            {
                "cell_type": "code",
                "outputs": [
                    {"output_type": "display_data", "data": {results.MIME_TYPE: record}}
                ],
            },
            {
                "cell_type": "code",
                "outputs": [
                    {
                        "output_type": "display_data",
                        "data": {results.MIME_TYPE: json.dumps(record)},
                    }
                ],
            },
            {"cell_type": "markdown"},
        ]
    }
    assert results.records_in(notebook) == [record, record]


def test_time_it_keeps_every_sample():
    calls = []
    timing = helpers.time_it(lambda: calls.append(1), repeats=4, warmup=2)
    assert len(calls) == 6 and len(timing.samples) == 4
    assert timing.min <= timing.median <= timing.max
    assert "4 runs" in str(timing)


def test_timing_statistics():
    timing = helpers.Timing((3.0, 1.0, 2.0))
    assert (timing.min, timing.median, timing.max) == (1.0, 2.0, 3.0)
    with pytest.raises(ValueError):
        helpers.time_it(lambda: None, repeats=0)


def test_within_returns_raises_or_gives_up():
    assert helpers.within(5, "a sum", sum, [1, 2]) == 3
    with pytest.raises(ZeroDivisionError):
        helpers.within(5, "a division", lambda: 1 / 0)
    start = time.perf_counter()
    with pytest.raises(TimeoutError, match="a long sleep did not finish within 0.2 s"):
        helpers.within(0.2, "a long sleep", time.sleep, 30)
    assert time.perf_counter() - start < 5


@pytest.mark.parametrize(
    "host, loopback",
    [
        ("127.0.0.1", True),
        ("127.0.0.3", True),
        ("::1", True),
        ("::ffff:127.0.0.1", True),
        ("localhost", True),
        ("0.0.0.0", False),
        ("", False),
        ("::", False),
        ("192.0.2.2", False),
    ],
)
def test_is_loopback(host, loopback):
    assert is_loopback(host) is loopback


def test_listening_addresses_sees_a_new_socket():
    with socket.create_server(("127.0.0.1", 0)) as server:
        address = server.getsockname()
        assert address in listening_addresses()
        assert not exposed(listening_addresses())
    assert exposed({("0.0.0.0", 80), ("127.0.0.1", 81)}) == {("0.0.0.0", 80)}


def _task_addresses_on_every_node() -> list[str]:
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    @ray.remote(num_cpus=1)
    def where() -> str:
        return ray.util.get_node_ip_address()

    # One task pinned to each node (SPREAD may skip a node whose first worker is still
    # starting).
    nodes = [node["NodeID"] for node in ray.nodes() if node["Alive"]]
    return sorted(
        ray.get(
            [
                where.options(
                    scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False)
                ).remote()
                for node in nodes
            ]
        )
    )


def test_an_isolated_cluster_has_distinct_addresses_and_only_loopback(no_leftovers):
    reason = unavailable_reason()
    if reason:
        pytest.skip(f"no isolated cluster on this machine: {reason}")
    run = run_isolated(_task_addresses_on_every_node, timeout_s=120)
    assert run.node_addresses == ["127.0.0.1", "127.0.0.2", "127.0.0.3"]
    assert run.value == run.node_addresses
    assert run.interfaces == ["lo"]


def test_an_isolated_run_reports_the_failure(no_leftovers):
    if unavailable_reason():
        pytest.skip(f"no isolated cluster on this machine: {unavailable_reason()}")
    with pytest.raises(RuntimeError, match="ZeroDivisionError"):
        run_isolated(lambda: 1 / 0, nodes=1, timeout_s=120)


def test_code_lines_skip_blanks_and_comments():
    assert (
        code_lines(
            "import ray\n\n# a comment\n    # indented comment\nx = 1  # counted\n"
        )
        == 2
    )


def test_integration_lines_count_only_tagged_cells(tmp_path):
    notebook = nbformat.v4.new_notebook()
    tagged = nbformat.v4.new_code_cell("import ray\nray.init()\n# why")
    tagged.metadata["tags"] = ["integration"]
    notebook.cells = [nbformat.v4.new_code_cell("x = 1\ny = 2"), tagged]
    path = tmp_path / "n.ipynb"
    nbformat.write(notebook, path)
    assert integration_lines(path) == 2
    notebook.cells = notebook.cells[:1]
    nbformat.write(notebook, path)
    with pytest.raises(ValueError, match="no code cell tagged 'integration'"):
        integration_lines(path)


def test_code_lines_leave_out_docstrings():
    source = (
        '"""A module."""\n\n\nclass A:\n    """Two\n    lines."""\n\n'
        '    def f(self):\n        """One."""\n        return 1\n'
    )
    assert code_lines(source) == 3  # class, def, return
    assert (
        code_lines("%time x = 1\ny = 2\n") == 2
    )  # not plain Python: every line counts


def test_package_lines_of_a_module_and_a_package():
    assert 0 < package_lines("json.decoder") < package_lines("json")
    with pytest.raises(ModuleNotFoundError):
        package_lines("no_such_module_here")


def test_a_package_is_counted_without_its_tests_and_examples(tmp_path, monkeypatch):
    package = tmp_path / "library_on_ray"
    for path in (
        "__init__.py",
        "core.py",
        "tests/test_core.py",
        "examples/demo.py",
        "test_more.py",
    ):
        (package / path).parent.mkdir(parents=True, exist_ok=True)
        (package / path).write_text("x = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert [path.name for path in package_files("library_on_ray")] == [
        "__init__.py",
        "core.py",
    ]
    assert package_lines("library_on_ray") == 2


@pytest.mark.parametrize(
    ("source", "features"),
    [
        ("@ray.remote\ndef f(): ...", ["tasks"]),
        ("@ray.remote(num_cpus=0)\nclass Keeper: ...", ["actors"]),
        (
            "Worker = ray.remote(num_cpus=1)(Trainer)\nstep = ray.remote(train_step)",
            ["tasks", "actors"],
        ),
        ("group = placement_group([{'CPU': 1}] * 2)", ["placement groups"]),
        ("ref = ray.put(table)", ["object store"]),
        (
            "collective.create_collective_group(members, backend='torch_gloo')",
            ["collective groups"],
        ),
        (
            "@ray.method(tensor_transport='gloo')\ndef make(self): ...",
            ["direct transport"],
        ),
        ("graph = node.experimental_compile()", ["compiled graphs"]),
        ("ray.init()\nray.get(handle.call.remote())", []),
    ],
)
def test_ray_features_are_found_by_api_name(source, features):
    assert ray_features(source) == features


def test_the_ledger_lists_the_toc_notebooks_in_order(tmp_path):
    toc = tmp_path / "_toc.yml"
    toc.write_text(
        "root: book/intro\nparts:\n  - chapters:\n      - file: book/level1\n"
        "      - file: notebooks/10_a\n      - file: notebooks/20_b.ipynb\n"
    )
    assert toc_notebooks(toc) == [
        tmp_path / "notebooks/10_a.ipynb",
        tmp_path / "notebooks/20_b.ipynb",
    ]


def test_a_ledger_chapter_shows_measurements_claims_and_machine():
    records = [
        {
            "kind": "machine",
            "cpus": 2,
            "memory_gib": 23.5,
            "gpus": 0.0,
            "ray_version": "2.60.0",
            "cluster": "started here, 3 nodes",
        },
        {
            "kind": "measurement",
            "name": "ray.put",
            "value": 2.5,
            "unit": "GB/s",
            "note": "",
            "compared_to": "memcpy",
        },
        {"kind": "claim", "name": "fast", "holds": True, "detail": "2.5 GB/s"},
    ]
    records.append({"kind": "not checked", "name": "gpu", "because": "no GPU here"})
    declared = {
        "fast": {"fails_if": "slow", "negative_control": "test_slow"},
        "gpu": {"fails_if": "no gpu"},
    }
    chapter = Chapter(Path("n.ipynb"), "N", None, records, declared)
    assert (
        chapter.machine()
        == "2 CPUs, 23.5 GiB, no GPU, Ray 2.60.0; cluster started here, 3 nodes"
    )
    table = chapter.table()
    assert table["result"].tolist() == ["2.5 GB/s", "holds", "not checked here"]
    assert table["compared to, or fails if"].tolist() == [
        "memcpy",
        "fails if slow (negative control: test_slow)",
        "fails if no gpu",
    ]
    assert table["detail"].tolist()[-1] == "no GPU here"
    assert (chapter.result("fast"), chapter.result("gpu"), chapter.result("other")) == (
        "holds",
        "not checked here",
        "not run",
    )
    without = Chapter(Path("m.ipynb"), "M", None, [], {"gpu": {"fails_if": "no gpu"}})
    central = central_claims([chapter, without])
    assert central.values.tolist() == [
        ["N", "fast", "slow", "test_slow", "holds"],
        ["M", "none named yet", "", "", ""],
    ]


def test_figure_sets_title_and_labels():
    ax = helpers.figure("Title", "size (MB)", "time (ms)", logx=True)
    assert (ax.get_title(), ax.get_xlabel(), ax.get_ylabel()) == (
        "Title",
        "size (MB)",
        "time (ms)",
    )
    assert ax.get_xscale() == "log"
    with pytest.raises(ValueError, match="title"):
        helpers.figure("", "x", "y")


def test_gpus_to_use_falls_back_to_the_cpu_with_a_warning(monkeypatch):
    monkeypatch.setattr(gpu, "cuda_gpu_count", lambda: 0)
    assert gpu.gpus_to_use(False) == 0
    with pytest.warns(UserWarning, match="no CUDA GPU"):
        assert gpu.gpus_to_use(True) == 0
    monkeypatch.setattr(gpu, "cuda_gpu_count", lambda: 2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert gpu.gpus_to_use(True) == 1


def test_cuda_gpu_count_is_a_count():
    assert helpers.cuda_gpu_count() >= 0


def test_gpus_are_counted_as_ray_counts_them_without_torch(monkeypatch):
    # NVML's count, capped by CUDA_VISIBLE_DEVICES, and the skip reason says which it
    # was.
    monkeypatch.setattr(gpu, "_nvml_count", lambda: gpu.GpuCount(2, "NVML"))
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert gpu.visible_gpus() == gpu.GpuCount(2, "NVML")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
    assert gpu.visible_gpus().count == 1 and "CUDA_VISIBLE_DEVICES='1'" in str(
        gpu.visible_gpus()
    )
    for hidden in ("", "NoDevFiles"):
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", hidden)
        assert gpu.visible_gpus().count == 0
    monkeypatch.setattr(gpu, "_nvml_count", lambda: None)
    monkeypatch.setattr(gpu, "_nvidia_smi_count", lambda: None)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert gpu.visible_gpus() == gpu.GpuCount(0, "no NVIDIA driver found")


def small_notebook(path, *cells):
    notebook = nbformat.v4.new_notebook()
    notebook.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    parameters = nbformat.v4.new_code_cell("size = 1\nray_address = None")
    parameters.metadata["tags"] = ["parameters"]
    notebook.cells = [parameters, *(nbformat.v4.new_code_cell(c) for c in cells)]
    nbformat.write(notebook, path)
    return path


def test_an_unknown_parameter_is_an_error_before_anything_runs(tmp_path):
    notebook = small_notebook(tmp_path / "nb.ipynb", "print(size)")
    assert declared_parameters(notebook) == {"size": "1", "ray_address": "None"}
    with pytest.raises(
        UnknownParameter, match=r"no parameter 'sise'; it takes: ray_address, size"
    ):
        execute(notebook, tmp_path / "out.ipynb", {"sise": 2})
    assert not (tmp_path / "out.ipynb").exists()


def test_a_missing_kernel_is_an_error_that_says_what_to_do(tmp_path):
    notebook = nbformat.v4.new_notebook()
    notebook.metadata["kernelspec"] = {
        "name": "no-such-kernel-here",
        "display_name": "x",
        "language": "python",
    }
    notebook.cells = [nbformat.v4.new_code_cell("x = 1")]
    path = tmp_path / "n.ipynb"
    nbformat.write(notebook, path)
    with pytest.raises(
        MissingKernel, match="'no-such-kernel-here' is not installed.*make test"
    ):
        execute(path, tmp_path / "out.ipynb")


def test_a_failing_cell_is_named(tmp_path):
    notebook = small_notebook(tmp_path / "nb.ipynb", "x = 1", "raise KeyError('boom')")
    with pytest.raises(
        NotebookFailed,
        match=r"nb.ipynb, cell 4 \(.raise KeyError.*out.ipynb\): KeyError: 'boom'",
    ):
        execute(notebook, tmp_path / "out.ipynb", {"size": 2})


def test_records_come_back_from_an_executed_notebook(tmp_path):
    notebook = small_notebook(
        tmp_path / "nb.ipynb",
        "import helpers\n"
        "helpers.measure('size', size, 'items')\n"
        "helpers.claim('ok', True, 'yes')",
    )
    result = execute(notebook, tmp_path / "out.ipynb", {"size": 7})
    assert [m["value"] for m in result.measurements] == [7.0]
    assert [c["name"] for c in result.claims] == ["ok"]


def test_a_failing_cell_stops_the_cluster_it_started(tmp_path, no_leftovers):
    notebook = small_notebook(
        tmp_path / "nb.ipynb",
        "import helpers\ncluster = helpers.start_or_join(ray_address, worker_nodes=1)",
        "raise RuntimeError('the cell failed')",
    )
    with pytest.raises(NotebookFailed, match="the cell failed"):
        execute(notebook, tmp_path / "out.ipynb")
    # no_leftovers checks that the kernel's exit took the cluster with it.


def test_the_command_line_refuses_an_unknown_parameter(tmp_path, capsys):
    notebook = small_notebook(tmp_path / "nb.ipynb", "print(size)")
    assert (
        main([str(notebook), "-o", str(tmp_path / "out.ipynb"), "-p", "sise", "2"]) == 1
    )
    assert "no parameter 'sise'" in capsys.readouterr().err


def test_the_book_shows_a_check_by_its_line_and_other_records_not_at_all():
    from myst_nb.core.render import MimeData

    class Page:  # myst-nb's renderer, as far as the plugin uses it
        def render_text_plain(self, data):
            return [(data.mime_type, data.string)]

    claim = {"kind": "claim", "name": "n", "holds": True, "detail": "3 of 3"}
    measurement = {"kind": "measurement", "name": "t", "value": 1.0, "unit": "s"}
    shown = RecordRenderer.handle_mime(
        Page(), MimeData(results.MIME_TYPE, claim), False
    )
    assert shown == [("text/plain", results.record_line(claim))]
    assert "claim holds  n: 3 of 3" in shown[0][1]
    hidden = MimeData(results.MIME_TYPE, json.dumps(measurement))
    [comment] = RecordRenderer.handle_mime(Page(), hidden, False)
    assert comment.tagname == "comment" and not comment.astext()
    other = MimeData("text/plain", "a line")
    assert RecordRenderer.handle_mime(Page(), other, False) is None
    assert ("*", results.MIME_TYPE, 1) in RecordRenderer.mime_priority_overrides


@pytest.mark.parametrize(
    "remote, url",
    [
        ("https://github.com/org/book.git\n", "https://github.com/org/book"),
        (
            "https://x-access-token:secret@github.com/org/book",
            "https://github.com/org/book",
        ),
        ("git@gitlab.com:org/book.git", "https://gitlab.com/org/book"),
        ("ssh://git@github.com/org/my.book.git", "https://github.com/org/my.book"),
        ("/work/main", None),
        ("https://git.example.org/org/book.git", None),
        ("", None),
    ],
)
def test_launch_buttons_need_a_github_or_gitlab_remote(remote, url):
    assert public_repository_url(remote) == url


def test_the_disk_watch_sorts_a_file_by_the_first_folder_that_holds_it(tmp_path):
    from helpers.disk import DiskWatch

    session, records = tmp_path / "session", tmp_path / "session" / "artifacts"
    records.mkdir(parents=True)
    (records / "trial.json").write_text("{}")
    (session / "raylet.out").write_text("log")
    (tmp_path / "data.parquet").write_bytes(b"x" * 10)
    cluster = type("Cluster", (), {"address": "unused"})()
    kinds = {str(records): "records", str(session): "logs"}
    watch = DiskWatch(cluster, kinds, also_under=[str(tmp_path)])
    found = {Path(p).name: watch.kind_of(p) for p in watch.file_sizes()}
    assert found == {
        "trial.json": "records",
        "raylet.out": "logs",
        "data.parquet": "other files",
    }
    assert watch.kind_of("/tmp/ray_spilled_objects/x") == "spill files"


def test_a_dask_key_names_its_layer():
    from helpers.dask_objects import layer_of

    assert layer_of(("chunk_sum-3f2a9c", 0, 1)) == "chunk_sum"
    assert layer_of("mean_agg-aggregate-77be") == "mean_agg-aggregate"


def test_ss_is_read_one_connection_at_a_time():
    # A closing connection's counters line is blank: the next connection must not be
    # read as its counters. A process's name may hold spaces.
    listing = (
        "TIME-WAIT 0 0 [::ffff:127.0.0.1]:39348 [::ffff:127.0.0.1]:40935\n"
        "\t \n"
        "ESTAB 0 0 [::ffff:127.0.0.1]:40665 [::ffff:127.0.0.1]:51310 "
        'users:(("Socket Process",pid=11095,fd=39))\n'
        "\t bbr bytes_sent:6345 bytes_acked:6345 bytes_received:4229806 segs_out:101\n"
        "ESTAB 0 0 10.0.0.2:6379 10.0.0.3:51000\n"
        "\t cubic bytes_received:17\n"
    )
    assert parse_ss(listing) == {
        (("127.0.0.1", 40665), ("127.0.0.1", 51310)): (4229806, 11095),
        (("10.0.0.2", 6379), ("10.0.0.3", 51000)): (17, 0),
    }


def test_bytes_are_attributed_by_where_ray_serves_and_whose_connection_it_is():
    gcs, raylet, manager = ("10.0.0.1", 6379), ("10.0.0.2", 7000), ("10.0.0.2", 7001)
    peer, other = ("10.0.0.3", 5000), ("10.0.0.3", 6000)
    one, two = 1, 2  # two networks
    before = {
        (one, (("10.0.0.2", 40000), gcs)): (100, 7),  # Ray's: +50
        (two, (peer, ("10.0.0.2", 41000))): (1000, 8),  # a worker's own: +500
        (one, (("10.0.0.2", 42000), manager)): (0, 7),  # an object copy: the store's
        (one, (("10.0.0.2", 43000), raylet)): (900, 7),  # closed since: adds nothing
    }
    after = {
        (one, (("10.0.0.2", 40000), gcs)): (150, 7),
        (two, (peer, ("10.0.0.2", 41000))): (1500, 8),
        (one, (("10.0.0.2", 42000), manager)): (2**20, 7),
        (two, (other, ("10.0.0.9", 9))): (30, 9),  # not a Ray worker's: left out
        (one, (peer, ("10.0.0.2", 41000))): (70, 8),  # the same pid, another network
    }
    attributed = traffic.attribute(
        before, after, {gcs, raylet}, {manager}, workers={(two, 8)}
    )
    assert attributed == (50, 500)


def test_carried_by_wants_one_carrier_and_little_from_the_others():
    mib = 2**20

    def library_carried(ray: int, library: int) -> bool:
        carried = Carried(ray=ray, library=library, store=0)
        return checks.carried_by(carried, "library", at_least=8 * mib)[0]

    assert library_carried(ray=10, library=8 * mib)
    assert not library_carried(ray=mib, library=8 * mib)  # Ray took a tenth or more
    assert not library_carried(ray=0, library=7 * mib)  # less than the exchange


def test_a_figure_of_bytes_not_counted_says_why_and_draws_no_bar():
    reason = "counting bytes per connection needs Linux's ss"
    ax = plot_bytes_carried({"an exchange": Carried(unavailable=reason)}, "Who carried")
    assert not ax.containers
    assert [t.get_text() for t in ax.texts] == [f"not counted: {reason}"]
