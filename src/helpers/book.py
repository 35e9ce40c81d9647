"""How the rendered book shows a record: by its plain-text line.

Jupyter Book (through myst-nb) renders every MIME type in an output before it
picks one, and warns about types it does not know; the book is built with
warnings as errors. This plugin, registered in pyproject.toml under
``myst_nb.mime_renderers``, claims the record type and ranks it out, so the
page shows the record's "measured ..." or "claim holds ..." line.
"""

from __future__ import annotations

from typing import Any, ClassVar

from helpers.results import MIME_TYPE


class RecordRenderer:
    """A myst-nb MIME renderer plugin for :data:`helpers.results.MIME_TYPE`."""

    mime_priority_overrides: ClassVar[list[tuple[str, str, None]]] = [("*", MIME_TYPE, None)]

    @staticmethod
    def handle_mime(renderer: Any, data: Any, inline: bool) -> list | None:
        """Render the JSON record as nothing; None leaves other types to myst-nb."""
        return [] if data.mime_type == MIME_TYPE else None
