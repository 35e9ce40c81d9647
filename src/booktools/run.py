"""Execute a notebook with parameters, unattended, and report what it recorded.

The tests and the benchmark script use this; so can you::

    python -m booktools.run notebooks/00_live_cluster.ipynb -p smoke true

Papermill only warns about a parameter the notebook does not declare, and the
notebook then runs with its default: a typo silently changes the experiment.
Here an unknown parameter is an error, raised before anything runs.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nbformat
import papermill
from jupyter_client import AsyncKernelManager
from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel
from traitlets import Float

from helpers.results import records_in

CELL_TIMEOUT_S = 600


class PatientKernelManager(AsyncKernelManager):
    """A kernel given a minute to exit.

    A notebook whose cell failed stops its cluster when its kernel exits
    (helpers.cluster registers that at exit). On two cores that takes more than
    jupyter_client's 5 s, and half-way through it sends SIGTERM, which ends the kernel
    without running what was registered: the cluster's worker processes would be left
    running.
    """

    shutdown_wait_time = Float(60.0)


class UnknownParameter(ValueError):
    """A parameter the notebook's ``parameters`` cell does not declare."""


class NotebookFailed(RuntimeError):
    """A cell raised; the message names the notebook, the cell and the error."""


class MissingKernel(RuntimeError):
    """The notebook asks for a Jupyter kernel that this machine does not have."""


@dataclass
class ExecutedNotebook:
    """An executed notebook, its records and how long it took."""

    path: Path
    notebook: dict
    seconds: float

    @property
    def records(self) -> list[dict[str, Any]]:
        """Every measurement and claim, in cell order."""
        return records_in(self.notebook)

    @property
    def claims(self) -> list[dict[str, Any]]:
        """The claims alone."""
        return [r for r in self.records if r["kind"] == "claim"]

    @property
    def measurements(self) -> list[dict[str, Any]]:
        """The measurements alone."""
        return [r for r in self.records if r["kind"] == "measurement"]


def declared_parameters(notebook: Path) -> dict[str, Any]:
    """The names and default values in the notebook's ``parameters`` cell."""
    found = papermill.inspect_notebook(str(notebook))
    return {name: info["default"] for name, info in found.items()}


def execute(
    notebook: Path,
    output: Path,
    parameters: dict[str, Any] | None = None,
    *,
    cell_timeout: int = CELL_TIMEOUT_S,
    kernel: str | None = None,
) -> ExecutedNotebook:
    """Run ``notebook`` top to bottom with ``parameters``, writing it to ``output``.

    Raises :class:`UnknownParameter` before running if a parameter is not
    declared, :class:`MissingKernel` if the notebook's kernel is not installed,
    and :class:`NotebookFailed` if a cell raises (a failed claim included).
    """
    notebook, output, parameters = Path(notebook), Path(output), parameters or {}
    declared = declared_parameters(notebook)
    unknown = sorted(set(parameters) - set(declared))
    if unknown:
        raise UnknownParameter(
            f"{notebook.name} has no parameter {', '.join(map(repr, unknown))}; "
            f"it takes: {', '.join(sorted(declared))}."
        )
    _require_kernel(
        kernel or nbformat.read(notebook, as_version=4).metadata["kernelspec"]["name"]
    )
    output.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    try:
        papermill.execute_notebook(
            str(notebook),
            str(output),
            parameters=parameters,
            kernel_name=kernel,
            execution_timeout=cell_timeout,
            progress_bar=False,
            cwd=str(notebook.parent),
            kernel_manager_class=PatientKernelManager,
        )
    except papermill.PapermillExecutionError as error:
        first_line = (
            error.source.strip().splitlines()[0] if error.source.strip() else ""
        )
        raise NotebookFailed(
            f"{notebook.name}, cell {error.exec_count} "
            f"({first_line!r}; executed copy in {output}): "
            f"{error.ename}: {error.evalue}"
        ) from None
    seconds = time.perf_counter() - start
    return ExecutedNotebook(output, nbformat.read(output, as_version=4), seconds)


def _require_kernel(name: str) -> None:
    """Fail with the way out when a notebook's Jupyter kernel is not installed."""
    try:
        KernelSpecManager().get_kernel_spec(name)
    except NoSuchKernel:
        raise MissingKernel(
            f"The Jupyter kernel {name!r} is not installed. "
            "Notebooks that need an environment of their own get it from the set-up: "
            "run `make test` or `make book` once."
        ) from None


def _parse_value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def main(argv: list[str] | None = None) -> int:
    """The command line: execute one notebook, print its records; 1 on failure."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebook", type=Path)
    parser.add_argument(
        "-o", "--output", type=Path, help="where to write the executed copy"
    )
    parser.add_argument(
        "-p",
        "--parameter",
        nargs=2,
        action="append",
        default=[],
        metavar=("NAME", "VALUE"),
        help="VALUE is read as JSON if it can be",
    )
    args = parser.parse_args(argv)
    output = args.output or Path("_build/executed") / args.notebook.name
    parameters = {name: _parse_value(value) for name, value in args.parameter}
    try:
        result = execute(args.notebook, output, parameters)
    except (UnknownParameter, MissingKernel, NotebookFailed) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    for record in result.records:
        print(json.dumps(record))
    print(f"{args.notebook.name}: {result.seconds:.1f} s, written to {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
