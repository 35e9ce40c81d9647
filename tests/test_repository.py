"""The repository's own rules: clean notebooks, one source of dependencies, a book that
builds."""

from __future__ import annotations

import ast
import json
import re
import subprocess
import tomllib

import pytest
import yaml
from conftest import ROOT, TOOLS, toc_notebooks

from booktools.lines import RAY_FEATURES, integration_lines, integrations
from booktools.run import declared_parameters

ALL_NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
COMMON_PARAMETERS = {"ray_address", "use_gpu", "smoke"}


def test_every_notebook_is_in_the_book():
    assert set(ALL_NOTEBOOKS) == set(toc_notebooks())


def page_title(page) -> str:
    if page.suffix == ".ipynb":
        text = next(
            c["source"]
            for c in json.loads(page.read_text())["cells"]
            if c["cell_type"] == "markdown"
        )
        text = "".join(text)
    else:
        text = page.read_text()
    return next(line[2:].strip() for line in text.splitlines() if line.startswith("# "))


def test_every_page_in_the_table_of_contents_has_a_title_of_its_own():
    files = re.findall(r"(?:root|file): (\S+)", (ROOT / "_toc.yml").read_text())
    pages = [next(ROOT.glob(f"{name}.*")) for name in files]
    titles = [page_title(page) for page in pages]
    assert len(set(titles)) == len(titles), sorted(
        {t for t in titles if titles.count(t) > 1}
    )


ANSWER = "```{dropdown} Answer"


def parameter_names(cells: list[dict]) -> set[str]:
    cell = next(c for c in cells if "parameters" in c["metadata"].get("tags", []))
    return set(re.findall(r"^(\w+) =", "".join(cell["source"]), re.MULTILINE))


@pytest.mark.parametrize("notebook", toc_notebooks(), ids=lambda p: p.stem)
def test_each_chapter_opens_with_a_summary_and_ends_with_exercises(notebook):
    cells = json.loads(notebook.read_text())["cells"]
    opening = "".join(cells[0]["source"])
    assert opening.startswith("# "), "the first cell is the chapter's title and summary"
    assert "{doc}`" in opening, "the summary names the chapter it builds on"
    assert "](https://" in opening, "the summary links to the library's own docs"
    exercises = "".join(cells[-1]["source"])
    assert exercises.startswith("## Exercises\n"), "the last cell is the exercises"
    questions = [
        item.split(ANSWER)[0]
        for item in re.split(r"^\d+\. ", exercises, flags=re.MULTILINE)[1:]
    ]
    assert 2 <= len(questions) == exercises.count(ANSWER), (
        "two or more exercises, each with its answer in a dropdown"
    )
    names = parameter_names(cells)
    driven = [q for q in questions if any(f"`{name}" in q for name in names)]
    assert len(driven) >= 2, "at least two exercises change the parameters cell"


@pytest.mark.parametrize("notebook", ALL_NOTEBOOKS, ids=lambda p: p.stem)
def test_notebooks_are_committed_without_outputs(notebook):
    # What the pre-commit hook enforces: no outputs, execution counts or per-run
    # metadata.
    stripped = subprocess.run(
        [TOOLS / "nbstripout", "--keep-id", "--verify", notebook],
        capture_output=True,
        text=True,
    )
    assert stripped.returncode == 0, (
        f"{notebook.name} carries outputs; strip it with "
        f".venv/bin/nbstripout --keep-id {notebook.relative_to(ROOT)}"
    )
    # nbformat 4.5 wants an id on every cell, and the benchmarks name slow cells by it.
    missing = [
        i
        for i, cell in enumerate(json.loads(notebook.read_text())["cells"])
        if "id" not in cell
    ]
    assert not missing, f"{notebook.name}: cells {missing} have no id"


def test_code_and_notebooks_pass_ruff():
    checked = subprocess.run(
        [TOOLS / "ruff", "check", "--no-fix", "."],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_the_pre_commit_configuration_is_valid():
    config = ROOT / ".pre-commit-config.yaml"
    validated = subprocess.run(
        [TOOLS / "pre-commit", "validate-config", config],
        capture_output=True,
        text=True,
    )
    assert validated.returncode == 0, validated.stdout + validated.stderr


@pytest.mark.parametrize("notebook", ALL_NOTEBOOKS, ids=lambda p: p.stem)
def test_notebooks_take_the_common_parameters(notebook):
    missing = COMMON_PARAMETERS - set(declared_parameters(notebook))
    assert not missing, f"{notebook.name}: its parameters cell lacks {sorted(missing)}"


def book_metadata(notebook) -> dict:
    return json.loads(notebook.read_text())["metadata"].get("ray_library_patterns", {})


def test_each_chapter_has_a_gpu_path_with_its_claim_or_says_why_not():
    """A `gpu` variant runs only where the chapter does something else on a GPU, and a
    claim there says the GPU did the work; every other chapter says why it has none (the
    list below)."""
    for notebook in ALL_NOTEBOOKS:
        book = book_metadata(notebook)
        gpu, why_not = book.get("gpu"), book.get("no_gpu_path")
        assert (gpu is None) != (why_not is None), (
            f"{notebook.stem}: declare exactly one of gpu and no_gpu_path"
        )
        if gpu:
            assert gpu["does"] and gpu["claim"] in book["claims"], (
                f"{notebook.stem}: its GPU claim is not declared"
            )
        else:
            print(f"no GPU path: {notebook.stem}: {why_not}")


# Chapters 1x, 2x and 3x show one level each; 0x gets started, 4x compares the levels,
# 5x joins libraries of several levels.
@pytest.mark.parametrize(
    "notebook", [n for n in ALL_NOTEBOOKS if n.stem[0] in "123"], ids=lambda p: p.stem
)
def test_level_notebooks_mark_their_integration_code(notebook):
    # The level pages count these cells; a chapter without them has no cost to show.
    assert integration_lines(notebook) > 0


def test_the_list_of_integrations_names_real_chapters_levels_and_features():
    # One list (notebooks/integrations.yml) for the level pages and chapter 40.
    entries = integrations(ROOT / "notebooks")
    tagged = {
        n.stem
        for n in ALL_NOTEBOOKS
        if any(
            "integration" in c.get("metadata", {}).get("tags", [])
            for c in json.loads(n.read_text())["cells"]
        )
    }
    listed = [e["notebook"] for e in entries]
    assert len(listed) == len(set(listed)), "an integration is listed twice"
    not_listed = {
        "24_alibi",  # runs in an environment of its own; its chapter counts its lines
        "31_spilling_and_recovery",  # the store by hand again: 30 stands for both
    }
    assert set(listed) == tagged - not_listed, set(listed) ^ (tagged - not_listed)
    for entry in entries:
        assert entry["level"] in (1, 2, 3), entry
        features = {*entry["features"], *entry.get("unseen", {})}
        features |= set(entry.get("not_its_own", {}))
        assert features <= set(RAY_FEATURES), (entry["name"], features)


def test_conda_environment_leaves_python_packages_to_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    environment = (ROOT / "environment.yml").read_text()
    conda = yaml.safe_load(environment)["dependencies"]
    assert all(isinstance(d, str) for d in conda), (
        "environment.yml must install nothing through pip"
    )
    assert "make book VENV=$CONDA_PREFIX" in environment, (
        "environment.yml must say how to finish"
    )
    python = next(d for d in conda if isinstance(d, str) and d.startswith("python="))
    assert project["requires-python"] == f">={python[7:]},<3.{int(python[9:]) + 1}"
    conda_names = {d.split("=")[0] for d in conda if isinstance(d, str)}
    python_names = {
        r.split("[")[0].split("=")[0].lower() for r in project["dependencies"]
    }
    assert not conda_names & python_names, "a Python package is pinned in both files"


def test_binder_runs_the_set_up_into_its_own_environment(tmp_path):
    # Binder builds environment.yml, then runs postBuild: the same set-up as make, into
    # its environment.
    post_build = ROOT / "postBuild"
    assert post_build.stat().st_mode & 0o111, "postBuild must be executable"
    assert 'make setup VENV="${NB_PYTHON_PREFIX' in post_build.read_text()
    dry_run = subprocess.run(
        ["make", "--dry-run", "setup", f"VENV={tmp_path}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert dry_run.returncode == 0, dry_run.stderr
    assert (
        f"{tmp_path}/bin/python -m pip install --quiet --find-links" in dry_run.stdout
    )


# Each lock and the groups of pyproject.toml it is resolved from (scripts/lock).
LOCKS = {
    "requirements.lock": ["dependencies", "book", "test", "horovod"],
    "requirements-alibi.lock": ["alibi"],
}


def pinned(requirements: list[str]) -> dict[str, str]:
    """name -> version of each "name[extras]==version" line, names in PyPI's canonical
    form."""
    pins = {}
    for line in requirements:
        name, _, version = line.split("#")[0].split(";")[0].strip().partition("==")
        if name:
            pins[re.sub(r"[-_.]+", "-", name.split("[")[0]).lower()] = version
    return pins


@pytest.mark.parametrize("lock", LOCKS)
def test_each_lock_holds_every_pin_of_pyproject(lock):
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = pinned(
        [
            pin
            for group in LOCKS[lock]
            for pin in (
                project["dependencies"]
                if group == "dependencies"
                else project["optional-dependencies"][group]
            )
        ]
    )
    locked = pinned((ROOT / lock).read_text().splitlines())
    stale = {
        name: f"pyproject {version}, lock {locked.get(name, 'missing')}"
        for name, version in wanted.items()
        if locked.get(name) != version
    }
    assert not stale, (
        f"{lock} does not match pyproject.toml: {stale}; refresh it with `make lock`"
    )


def test_ci_runs_the_readme_test_command():
    assert "exec make test" in (ROOT / ".ci" / "run").read_text()
    readme = (ROOT / "README.md").read_text()
    assert "make test" in readme and "make book" in readme


# deploy/: the book's cluster for `ray up` and for KubeRay, and the node image both run.
RAY_PIN = next(
    pin
    for pin in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "dependencies"
    ]
    if pin.startswith("ray[")
).split("==")[1]
IMAGE = f"ray-library-patterns:{RAY_PIN}"
SHARED = "/mnt/shared"


def test_the_node_image_has_the_books_ray_and_runs_the_readme_set_up():
    dockerfile = (ROOT / "deploy" / "Dockerfile").read_text()
    assert (
        f"FROM rayproject/ray:{RAY_PIN}-py311-cpu" in dockerfile
    )  # the lock's Ray and Python
    assert "RUN make setup VENV=" in dockerfile and "openjdk-17" in dockerfile


def test_the_kuberay_cluster_names_the_image_token_sizes_and_shared_folder():
    cluster = yaml.safe_load((ROOT / "deploy" / "raycluster.yaml").read_text())
    assert (cluster["apiVersion"], cluster["kind"]) == ("ray.io/v1", "RayCluster")
    spec = cluster["spec"]
    assert spec["rayVersion"] == RAY_PIN
    head, workers = spec["headGroupSpec"], spec["workerGroupSpecs"]
    assert (
        head["rayStartParams"]["include-dashboard"] == "true"
    )  # the chapters' state API
    assert (
        head["rayStartParams"]["num-cpus"] == "2"
        and workers[0]["rayStartParams"]["num-cpus"] == "1"
    )
    assert workers[0]["replicas"] >= 2
    for group in (head, *workers):
        pod = group["template"]["spec"]
        (container,) = pod["containers"]
        assert container["image"] == IMAGE
        environment = {
            e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]
        }
        assert (
            environment["RAY_AUTH_MODE"] == "token"
            and "secretKeyRef" in environment["RAY_AUTH_TOKEN"]
        )
        mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
        claims = {
            v["name"]: v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"]
        }
        assert mounts["shared"] == SHARED and claims["shared"]


def test_the_ray_up_cluster_names_the_image_token_sizes_and_shared_folder():
    cluster = yaml.safe_load((ROOT / "deploy" / "cluster.yaml").read_text())
    assert cluster["docker"]["image"] == IMAGE
    options = " ".join(cluster["docker"]["run_options"])
    assert (
        f"--volume={SHARED}:{SHARED}" in options
        and "--env=RAY_AUTH_MODE=token" in options
    )
    head = " ".join(cluster["head_start_ray_commands"])
    assert "--num-cpus=2" in head and "--dashboard-host=127.0.0.1" in head
    assert "--num-cpus=1" in " ".join(cluster["worker_start_ray_commands"])
    assert cluster["min_workers"] == cluster["max_workers"] == 2


def test_the_pages_name_the_chapters_that_need_shared_storage():
    """README and the cluster page list the chapters a reader must give storage_path:
    exactly those taking it."""
    takes_it = {
        path.name[:2]
        for path in sorted((ROOT / "notebooks").glob("*.ipynb"))
        if "storage_path" in declared_parameters(path)
    }
    readme = re.search(
        r"write what other nodes read \(([\d, ]+)\)", (ROOT / "README.md").read_text()
    )
    page = re.search(
        r"Chapters ([\d,\sand]+?)\s+write there",
        (ROOT / "book" / "real_cluster.md").read_text(),
    )
    for listed in (readme, page):
        assert listed and set(re.findall(r"\d+", listed.group(1))) == takes_it, (
            listed and listed.group(0),
            takes_it,
        )


def test_the_commands_the_cluster_page_gives_name_real_notebooks_and_parameters():
    page = (ROOT / "book" / "real_cluster.md").read_text() + (
        ROOT / "README.md"
    ).read_text()
    page = re.sub(r"\\\n\s*", "", page)  # continued lines joined
    commands = re.findall(
        r"(ray job submit .*)?python -m booktools\.run (notebooks/\S+\.ipynb)"
        r"((?: -p \S+ \S+)+)",
        page,
    )
    assert any(submit for submit, _, _ in commands), (
        "no `ray job submit ... booktools.run` command found"
    )
    for submit, notebook, options in commands:
        given = set(re.findall(r"-p (\S+) ", options + " "))
        assert given <= set(declared_parameters(ROOT / notebook)), (
            f"{notebook} has no parameter {given}"
        )
        if (
            submit
        ):  # a job on a real cluster: the chapter's files go to the shared folder
            assert (
                "--working-dir ." in submit and f"-p storage_path {SHARED}" in options
            )


def notebook_code(notebook) -> str:
    cells = json.loads(notebook.read_text())["cells"]
    return "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "code")


def test_each_helper_says_which_chapters_use_it():
    """A reader who opens a helper finds the chapters that use it: its docstring names
    each chapter that imports it, or says that every chapter does."""
    code = {notebook.name[:2]: notebook_code(notebook) for notebook in ALL_NOTEBOOKS}
    unnamed = {}
    for module in sorted((ROOT / "src" / "helpers").glob("[!_]*.py")):
        used = re.compile(
            rf"\bhelpers\.{module.stem}\b|from helpers import [^\n]*\b{module.stem}\b"
        )
        users = sorted(number for number, source in code.items() if used.search(source))
        doc = ast.get_docstring(ast.parse(module.read_text())) or ""
        if re.search(r"\b(every|each) (chapter|notebook)\b", doc, re.IGNORECASE):
            continue
        if missing := [n for n in users if not re.search(rf"\b{n}\b", doc)]:
            unnamed[module.name] = missing
    assert not unnamed, (
        f"chapters that use a helper its docstring does not name: {unnamed}"
    )
