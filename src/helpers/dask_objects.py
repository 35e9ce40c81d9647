"""Which Ray objects a Dask computation made, and where they lie (chapter 34).

Dask on Ray runs each task of Dask's graph as a Ray task, whose result is a Ray
object. :class:`StoredResults`, a Dask-on-Ray callback, keeps the object reference of
every task it submits; :meth:`StoredResults.objects` then asks Ray's object directory
for each result's size and the nodes whose stores hold a copy.
"""

from __future__ import annotations

import pandas as pd
import ray
from ray.util.dask import RayDaskCallback

from helpers.internals import object_locations


class StoredResults(RayDaskCallback):
    """Keeps the Ray object reference of each Dask task this process submits.

    Use it as a context manager around ``compute()``. Ray sends the callback along
    with every task (it can also run hooks on the workers), so it drops its record
    when pickled: the references stay in the driver.
    """

    def __init__(self, node_names: dict[str, str]) -> None:
        super().__init__()
        self.node_names = node_names
        self.refs: dict = {}

    def _ray_postsubmit(self, task, key, deps, object_ref) -> None:
        self.refs[key] = object_ref

    def __getstate__(self) -> dict:
        return {}

    def objects(self) -> pd.DataFrame:
        """One row per task result: its Dask layer ("random", "chunk_sum", ...), its
        size in MB, and the nodes whose stores hold it (none: it is inline, in its
        owner's memory)."""
        refs = list(self.refs.values())
        ray.wait(refs, num_returns=len(refs), fetch_local=False)
        locations = object_locations(refs)
        return pd.DataFrame(
            [
                {
                    "layer": layer_of(key),
                    "MB": (locations[ref]["object_size"] or 0) / 2**20,
                    "nodes": sorted(
                        self.node_names.get(n, n[:8])
                        for n in locations[ref]["node_ids"]
                    ),
                }
                for key, ref in self.refs.items()
            ]
        )


def layer_of(key) -> str:
    """The layer of Dask's graph a task key belongs to: ``("chunk_sum-3f2a", 0, 1)``
    is in ``chunk_sum``."""
    name = key[0] if isinstance(key, tuple) else key
    return name.rsplit("-", 1)[0]


def by_layer(objects: pd.DataFrame) -> pd.DataFrame:
    """Per layer: its tasks, the MB of their results, how many of those are in
    shared memory, and on which nodes."""
    return (
        objects.groupby("layer")
        .agg(
            tasks=("MB", "size"),
            MB=("MB", "sum"),
            in_shared_memory=("nodes", lambda lists: sum(map(bool, lists))),
            nodes=(
                "nodes",
                lambda lists: ", ".join(sorted({n for nodes in lists for n in nodes})),
            ),
        )
        .sort_values("MB", ascending=False)
    )


def by_node(objects: pd.DataFrame) -> pd.DataFrame:
    """The MB each node's store holds, per layer (a copy counts where it lies)."""
    held = objects.explode("nodes").dropna(subset=["nodes"])
    return held.pivot_table(
        index="layer", columns="nodes", values="MB", aggfunc="sum", fill_value=0
    )
