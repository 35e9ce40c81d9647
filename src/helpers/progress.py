"""Progress bars from inside Ray's remote work, drawn as text.

The chapters draw their own loops' bars with ``from tqdm import tqdm``: tqdm's
text bars render alike in Jupyter, in papermill and in the built book, where
its notebook widgets would need JavaScript from a CDN.

Inside a task or an actor, Ray's ``ray.experimental.tqdm_ray.tqdm`` sends each
update to the driver, and the driver draws the bar.
:func:`draw_remote_bars_as_text` makes it draw them as text too: in Jupyter,
Ray would pick tqdm's widgets. :class:`RoundsBar` is such a bar for XGBoost's
boosting rounds, wherever the training runs.
"""

from __future__ import annotations

import tqdm.std
import xgboost

from helpers.internals import tqdm_ray


def draw_remote_bars_as_text() -> None:
    """Make this driver draw the bars of its remote work with tqdm's text bars."""
    tqdm_ray.real_tqdm = tqdm.std


class RoundsBar(xgboost.callback.TrainingCallback):
    """A bar of boosting rounds, for ``xgboost.train(..., callbacks=[RoundsBar(...)])`` in remote work.

    The bar is made when training starts, in the process that trains, so the
    callback may be built anywhere and shipped to a task or an actor.
    """

    def __init__(self, description: str, rounds: int) -> None:
        self.description, self.rounds, self.bar = description, rounds, None

    def before_training(self, model):
        self.bar = tqdm_ray.tqdm(desc=self.description, total=self.rounds)
        return model

    def after_iteration(self, model, epoch: int, evals_log: dict) -> bool:
        self.bar.update(1)
        return False  # keep training

    def after_training(self, model):
        self.bar.close()
        return model
