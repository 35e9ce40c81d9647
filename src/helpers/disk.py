"""What each stage of a pipeline wrote to files, sorted by kind (chapter 50).

Chapter 50 checks that libraries which hand data to each other through Ray's object
store write none of it to disk. :class:`DiskWatch` lists every file under the folders
a stage could write to, with its size, before and after the stage, and sorts what grew
by where it lies: bookkeeping (Ray's logs, Tune's records), Ray's spill files, and
"other files", which would be data on disk.

It sees this machine only: on a cluster of several machines the workers' disks are not
in the listing.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from helpers.store import spill_counters

SPILL_FILES = "spill files"
OTHER_FILES = "other files"


class DiskWatch:
    """Time stages, and measure what each added to files of each kind.

    ``kinds`` maps a folder to the kind of file it holds; the first folder that
    contains a path names its kind. Listed are those folders, ``also_under``, and
    whatever appeared in the temporary folder after the watch began. Notebooks
    (``.ipynb``) are left out: Jupyter may save one while you read.
    """

    def __init__(
        self, cluster: Any, kinds: dict[str, str], also_under: list[str]
    ) -> None:
        self.address = cluster.address
        self.kinds = kinds
        self.roots = {*kinds, *also_under}
        self.temporary = tempfile.gettempdir()
        self.present_at_start = set(os.listdir(self.temporary))
        self.stages: list[dict[str, Any]] = []

    def kind_of(self, path: str) -> str:
        if "ray_spilled_objects" in path:
            return SPILL_FILES
        return next(
            (kind for folder, kind in self.kinds.items() if path.startswith(folder)),
            OTHER_FILES,
        )

    def file_sizes(self) -> dict[str, int]:
        new_in_temporary = {
            os.path.join(self.temporary, name)
            for name in set(os.listdir(self.temporary)) - self.present_at_start
        }
        sizes = {}
        for root in self.roots | new_in_temporary:
            for folder, _, names in os.walk(root):
                for name in names:
                    if name.endswith(".ipynb"):
                        continue
                    path = os.path.join(folder, name)
                    try:
                        sizes[path] = os.lstat(path).st_size
                    except OSError:  # gone between listing and looking
                        pass
        return sizes

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Time the block, add its row to ``stages`` and print one line."""
        sizes = self.file_sizes()
        spilled = spill_counters(self.address)["spilled MiB"]
        start = time.perf_counter()
        yield
        seconds = time.perf_counter() - start
        kinds = [*dict.fromkeys(self.kinds.values()), SPILL_FILES, OTHER_FILES]
        written = dict.fromkeys(kinds, 0)
        others = []  # the files that would be data on disk, to name them
        for path, size in self.file_sizes().items():
            grown = max(0, size - sizes.get(path, 0))
            written[self.kind_of(path)] += grown
            if grown and self.kind_of(path) == OTHER_FILES:
                others.append(path)
        self.stages.append(
            {
                "stage": name,
                "seconds": seconds,
                **{f"{kind} (KB)": size / 1e3 for kind, size in written.items()},
                "spilled (MiB)": spill_counters(self.address)["spilled MiB"] - spilled,
                OTHER_FILES: others,
            }
        )
        print(
            f"{name}: {seconds:.1f} s; written: "
            + ", ".join(f"{kind} {size / 1e3:.0f} KB" for kind, size in written.items())
        )
