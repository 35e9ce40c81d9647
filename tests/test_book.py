"""The built book: it builds with warnings as errors, its links resolve, and every page
renders offline, without errors, with every figure drawn."""

from __future__ import annotations

import contextlib
import functools
import http.server
import json
import os
import re
import shutil
import subprocess
import threading
from pathlib import Path
from urllib.parse import urlparse

import pytest
import yaml
from conftest import ROOT, TOOLS, check_records, toc_notebooks
from listeners import ListenerSampler

from booktools import ledger

HTML = ROOT / "_build" / "html"
pytestmark = pytest.mark.book


@pytest.fixture(scope="module")
def book_build() -> tuple[Path, ListenerSampler]:
    """Build the whole book once (executing what changed) for every test here.

    Each notebook runs at the book's size on a cluster of its own: this is its one
    execution on a local cluster in a test run. A RAY_ADDRESS in the environment would
    make it join that one. Every socket the build's kernels, clusters and libraries
    listen on is sampled meanwhile.
    """
    environment = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    with ListenerSampler() as sockets:
        build = subprocess.run(
            [
                TOOLS / "jupyter-book",
                "build",
                ROOT,
                "--all",
                "-W",
                "-n",
                "--keep-going",
            ],
            capture_output=True,
            text=True,
            cwd=ROOT,
            timeout=3000,
            env=environment,
        )
    assert build.returncode == 0, build.stdout[-4000:] + build.stderr[-4000:]
    return HTML, sockets


@pytest.fixture(scope="module")
def built_book(book_build) -> Path:
    return book_build[0]


def test_the_book_builds_with_warnings_as_errors(built_book):
    for notebook in toc_notebooks():
        page = built_book / notebook.relative_to(ROOT).with_suffix(".html")
        assert page.exists(), f"{page} was not built"
    # The ledger is read last, so it sees this build's execution of every notebook.
    ledger = (built_book / "book" / "ledger.html").read_text(encoding="utf-8")
    count = len(toc_notebooks())
    assert (
        f"{count} of {count} notebooks executed" in ledger and ", 0 failed," in ledger
    )


@pytest.mark.parametrize("notebook", toc_notebooks(), ids=lambda p: p.stem)
def test_each_notebook_ran_in_the_book_and_its_claims_held(built_book, notebook):
    chapter = next(
        c
        for c in ledger.chapters(ROOT / "_toc.yml", ROOT / "_build" / ".jupyter_cache")
        if c.notebook == notebook
    )
    assert chapter.executed is not None, (
        f"{notebook.name} has no execution in the book's cache"
    )
    check_records(notebook, chapter.records)


# Listeners beyond loopback that a chapter shows and checks (its claim fails when they
# change).
SHOWN_IN_A_CHAPTER = {
    # 12_lightning: PyTorch's TCPStore, which Ray Train opens on rank 0, binds every
    # interface.
    "TCPStore under Ray Train": re.compile(
        r"^ray::(RayTrainWorker|execute\._setup_torch_process_group)"
    ),
    # 35_xgboost: XGBoost's workers listen for their ring peers on every interface (Ray
    # Train's workers, matched above, run the same collective).
    "XGBoost's collective": re.compile(r"^ray::(_RemoteRayXGBoostActor|join_ring)"),
    # 24_alibi: every Ray Serve replica serves calls between deployments over gRPC on
    # [::]; 36_ray_libraries sends requests over it.
    "Serve's replica gRPC server": re.compile(r"^ray::ServeReplica"),
    # 60_collectives: rank 0 of Ray's Gloo group lets PyTorch open its TCPStore, on
    # every interface; 61_direct_transport's actors form the same group.
    "the rendezvous store of Ray's Gloo group": re.compile(
        r"^ray::(GroupMember|TensorHolder)"
    ),
}


def test_every_socket_the_book_build_opened_was_on_loopback(book_build):
    _, sockets = book_build
    if not any("ipykernel" in s.process for s in sockets.seen):
        pytest.skip(
            "no notebook ran in this build: every execution came from the cache"
        )
    unexplained = [
        s
        for s in sockets.seen
        if s.reachable_from_other_machines
        and not any(p.match(s.process) for p in SHOWN_IN_A_CHAPTER.values())
    ]
    assert not unexplained, (
        f"listening beyond loopback: {sorted(map(str, unexplained))}"
    )


def test_every_internal_link_resolves(built_book):
    # linkchecker follows every link from the start page; links to other hosts are not
    # fetched.
    checked = subprocess.run(
        [
            TOOLS / "linkchecker",
            "--no-status",
            "--no-warnings",
            built_book / "index.html",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert checked.returncode == 0, checked.stdout[-4000:] + checked.stderr[-2000:]


def pages(html: Path) -> list[str]:
    # Not _static, _sources, ... nor anything hidden that a tool left in the folder.
    return sorted(
        str(p.relative_to(html))
        for p in html.rglob("*.html")
        if not p.relative_to(html).parts[0].startswith(("_", "."))
    )


@pytest.fixture(scope="module")
def browser():
    """Headless Chromium, driven over WebDriver, logging every request and console
    message."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    chromedriver = shutil.which("chromedriver")
    if not (chromium and chromedriver):
        pytest.skip(
            "no chromium and chromedriver on PATH "
            "(Debian: apt install chromium chromium-driver; "
            "the set-up installs them when it runs as root)"
        )
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
    ):
        options.add_argument(flag)
    options.set_capability(
        "goog:loggingPrefs", {"performance": "ALL", "browser": "ALL"}
    )
    driver = webdriver.Chrome(
        options=options, service=Service(executable_path=chromedriver)
    )
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


@contextlib.contextmanager
def serving(html: Path):
    """A built book over HTTP on loopback, as a reader's browser would get it."""
    handler = functools.partial(
        http.server.SimpleHTTPRequestHandler, directory=str(html)
    )
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()


# For every image on the page: did it load, and how many colours does a sample of its
# pixels have?
FIGURES_JS = """
return Array.from(document.images).map(image => {
  const canvas = document.createElement("canvas");
  canvas.width = image.naturalWidth; canvas.height = image.naturalHeight;
  if (!image.complete || image.naturalWidth === 0)
    return {src: image.src, loaded: false, colours: 0};
  const context = canvas.getContext("2d");
  context.drawImage(image, 0, 0);
  const pixels = context.getImageData(0, 0, canvas.width, canvas.height).data;
  const colours = new Set();
  for (let i = 0; i < pixels.length; i += 4 * 31)
    colours.add((pixels[i] << 16) | (pixels[i + 1] << 8) | pixels[i + 2]);
  return {src: image.src, loaded: true, colours: colours.size};
});
"""


# For every notebook cell on the page: its classes (which carry its tags), its code
# lines and the text of its outputs, as the reader sees them.
CELLS_JS = """
return Array.from(document.querySelectorAll("div.cell")).map(cell => ({
  classes: cell.className,
  code: Array.from(cell.querySelectorAll(".cell_input pre"))
    .map(pre => pre.innerText).join("\\n"),
  outputs: Array.from(cell.querySelectorAll(".cell_output"))
    .map(output => output.innerText).join("\\n"),
}));
"""

# What a reader should not meet in a cell's outputs: Ray's log lines (its logger's
# format, and the lines it forwards from workers and raylets, prefixed with the
# process), Python tracebacks and warnings, and records other than checks. A chapter
# that shows an error on purpose tags that cell "shows-error".
NOISE = {
    "Ray log line": re.compile(
        r"^\s*\((raylet|pid=\d+|[\w.:-]+ pid=\d+)[^)]*\)"
        r"|^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d[,.]\d+\s+(DEBUG|INFO|WARNING|ERROR)\b"
        r"|^\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d[,.]\d+ [DIWEF] ",
        re.MULTILINE,
    ),
    "traceback": re.compile(r"Traceback \(most recent call last\)"),
    "warning": re.compile(r"^.*\b\w*Warning: |^WARNING\b", re.MULTILINE),
    # The page shows a chapter's checks; its measurements are in the results ledger.
    "record that is not a check": re.compile(r"^(measured|machine)  \S", re.MULTILINE),
}
SHOWS_ERROR = "tag_shows-error"
CODE_COLUMNS = 88


def noise_in(cells: list[dict]) -> list[str]:
    """Log lines, tracebacks and warnings in the outputs, and code lines over 88
    columns."""
    found = []
    for cell in cells:
        outputs = cell["outputs"]
        if SHOWS_ERROR not in cell["classes"].split():
            for what, pattern in NOISE.items():
                found += [
                    f"{what}: {m.group(0).strip()[:100]}"
                    for m in pattern.finditer(outputs)
                ]
        found += [
            f"code line of {len(line)} columns: {line[:60]}..."
            for line in cell["code"].splitlines()
            if len(line) > CODE_COLUMNS
        ]
    return found


def test_noise_in_finds_log_lines_tracebacks_warnings_and_long_code():
    quiet = {
        "classes": "cell docutils container",
        "code": "print(1)",
        "outputs": "1 of 2 nodes held",
    }
    noisy = [
        {
            **quiet,
            "outputs": "(raylet) A worker died or was killed while executing a task",
        },
        {**quiet, "outputs": "(pid=4242) hello from a worker"},
        {**quiet, "outputs": "(RayTrainWorker pid=77, ip=127.0.0.1) epoch 1"},
        {
            **quiet,
            "outputs": (
                "2026-12-04 18:00:00,123\tINFO worker.py:1 -- "
                "Connecting to existing Ray cluster"
            ),
        },
        {**quiet, "outputs": "[2026-12-04 18:00:00,123 E 5 5] core_worker.cc:1: oops"},
        {**quiet, "outputs": "Traceback (most recent call last):\n  File ..."},
        {**quiet, "outputs": "/x.py:3: FutureWarning: this will change"},
        {**quiet, "code": "x = " + "1" * 90},
        {**quiet, "outputs": "measured  ray.get of 1 MB = 0.5 ms"},
    ]
    assert noise_in([quiet]) == []
    assert all(noise_in([cell]) for cell in noisy)
    shown = {**noisy[5], "classes": "cell tag_shows-error docutils container"}
    assert noise_in([shown]) == []


def open_page(browser, url: str) -> tuple[dict[str, list[str]], int]:
    """Open ``url``; what went wrong (requests to other hosts, console errors, bad
    figures, noise in a cell) and the figure count."""
    browser.get_log("performance"), browser.get_log("browser")  # drop what came before
    browser.get(url)
    requested = [
        json.loads(entry["message"])["message"]
        for entry in browser.get_log("performance")
    ]
    elsewhere = sorted(
        {
            m["params"]["request"]["url"]
            for m in requested
            if m["method"] == "Network.requestWillBeSent"
            and urlparse(m["params"]["request"]["url"]).hostname
            not in (None, "127.0.0.1")
        }
    )
    # A browser asks for /favicon.ico by itself; the book has none, and no page links
    # one.
    errors = [
        e["message"]
        for e in browser.get_log("browser")
        if e["level"] == "SEVERE" and "/favicon.ico " not in e["message"]
    ]
    images = browser.execute_script(FIGURES_JS)
    bad_images = [i["src"] for i in images if not i["loaded"] or i["colours"] < 2]
    found = {
        "requests to other hosts": elsewhere,
        "console errors": errors,
        "figures missing or blank": bad_images,
        "noise in cells": noise_in(browser.execute_script(CELLS_JS)),
    }
    return {what: items for what, items in found.items() if items}, len(images)


def test_every_page_renders_offline_without_errors(browser, built_book):
    problems, figures = {}, 0
    with serving(built_book) as served:
        for page in pages(built_book):
            problems[page], count = open_page(browser, f"{served}/{page}")
            figures += count
    problems = {page: found for page, found in problems.items() if found}
    assert not problems, json.dumps(problems, indent=1)
    assert figures >= len(toc_notebooks()), f"only {figures} figures in the whole book"


CHAPTER = "notebooks/00_live_cluster"


def small_book(folder: Path, origin: str | None) -> Path:
    """One chapter, not executed, built with the book's configuration in a git clone
    whose origin is ``origin``."""
    config = yaml.safe_load((ROOT / "_config.yml").read_text())
    config["execute"]["execute_notebooks"] = "off"
    # The chapter links pages that this one-chapter book leaves out.
    config["sphinx"]["config"]["suppress_warnings"] = ["ref.doc"]
    (folder / "_config.yml").write_text(yaml.safe_dump(config))
    (folder / "_toc.yml").write_text(f"format: jb-book\nroot: {CHAPTER}\n")
    (folder / "notebooks").mkdir()
    shutil.copy(ROOT / f"{CHAPTER}.ipynb", folder / "notebooks")
    subprocess.run(["git", "init", "--quiet"], cwd=folder, check=True)
    if origin:
        subprocess.run(
            ["git", "remote", "add", "origin", origin], cwd=folder, check=True
        )
    build = subprocess.run(
        [TOOLS / "jupyter-book", "build", folder, "-W", "-n"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert build.returncode == 0, build.stdout[-4000:] + build.stderr[-4000:]
    return folder / "_build" / "html"


@pytest.fixture(scope="module")
def cloned_from_github(tmp_path_factory) -> Path:
    return small_book(
        tmp_path_factory.mktemp("clone"),
        "git@github.com:a-reader/ray-library-patterns.git",
    )


def test_launch_buttons_open_the_repository_the_book_was_cloned_from(
    cloned_from_github,
):
    page = (cloned_from_github / f"{CHAPTER}.html").read_text(encoding="utf-8")
    assert (
        f"https://mybinder.org/v2/gh/a-reader/ray-library-patterns/main?urlpath=lab/tree/{CHAPTER}.ipynb"
        in page
    )
    assert (
        f"https://colab.research.google.com/github/a-reader/ray-library-patterns/blob/main/{CHAPTER}.ipynb"
        in page
    )
    assert f"../_sources/{CHAPTER}.ipynb" in page  # the download button


def test_launch_buttons_request_nothing_until_clicked(cloned_from_github, browser):
    with serving(cloned_from_github) as served:
        problems, _ = open_page(browser, f"{served}/{CHAPTER}.html")
    assert not problems, json.dumps(problems, indent=1)


def test_a_clone_without_a_public_origin_builds_without_launch_buttons(tmp_path):
    page = (small_book(tmp_path, None) / f"{CHAPTER}.html").read_text(encoding="utf-8")
    assert "mybinder.org" not in page and "colab.research.google.com" not in page
    assert f"../_sources/{CHAPTER}.ipynb" in page  # the download button
