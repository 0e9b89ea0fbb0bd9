"""What can be wrong with a manifest, and the one error that lists it all.

Every row of a manifest is checked before anything is paid; each problem found is a
:class:`RowProblem` (line, row id, field, value, what is allowed), and :func:`manifest_error`
turns them all into one :class:`~prefect_kandinsky.gateway.exceptions.KandinskyManifestError`.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from prefect_kandinsky.gateway.exceptions import KandinskyManifestError
from prefect_kandinsky.gateway.prices import plural

KNOWN_COLUMNS: tuple[str, ...] = (
    "id",
    "prompt",
    "image",
    "resolution",
    "duration",
    "num_inference_steps",
    "acceleration",
    "filename",
    "destination",
)
"""The columns (CSV) or keys (JSONL, dicts) of a row, case-insensitive."""

MAX_LISTED_PROBLEMS = 50
"""Problems a :class:`KandinskyManifestError` message lists; the rest are counted."""

FIELD_ORDER = {name: index for index, name in enumerate(KNOWN_COLUMNS)}
"""Each known column's place, so that a row's problems are listed in column order."""


class RowProblem(BaseModel):
    """One problem of a manifest: where it is, what was given and what is allowed."""

    model_config = ConfigDict(frozen=True)

    line: int | None = Field(
        description="The 1-based line of the row (or of the CSV header); None for the "
        "manifest as a whole."
    )
    row_id: str | None = Field(default=None, description="The row's id, where it has one.")
    field: str | None = Field(
        default=None, description="The column or key at fault; None for the row as a whole."
    )
    value: Any = Field(default=None, description="The value given (long text shortened).")
    message: str = Field(description="What is wrong and what is allowed.")
    scope: Literal["row", "header", "manifest"] = Field(
        default="row",
        description="row: a row; header: the CSV header (line 1); manifest: the file itself.",
    )

    def __str__(self) -> str:
        if self.line is None:
            where = "manifest"
        elif self.scope == "header":
            where = f"line {self.line} (header)"
        else:
            where = f"line {self.line}" + (f" (id {self.row_id})" if self.row_id else "")
        field = f": {self.field}" if self.field else ""
        return f"{where}{field}: {self.message}"


def _sort_key(problem: RowProblem) -> tuple[int, int, int]:
    line = -1 if problem.line is None else problem.line
    scope = {"manifest": 0, "header": 1, "row": 2}[problem.scope]
    if problem.scope != "row":
        return (line, scope, 0)  # in the order found
    return (line, scope, FIELD_ORDER.get(problem.field or "", len(FIELD_ORDER)))


def manifest_error(
    source: str, problems: Iterable[RowProblem], *, message: str | None = None
) -> KandinskyManifestError:
    """The error listing ``problems`` of the manifest ``source`` (at most 50 of them).

    ``{source}: 3 problems in 2 rows; nothing was submitted:`` then one line per problem,
    and ``... and 12 more`` past :data:`MAX_LISTED_PROBLEMS`. ``message`` replaces the text.
    """
    ordered = sorted(problems, key=_sort_key)
    if message is None:
        rows = len({p.line for p in ordered if p.scope == "row" and p.line is not None})
        listed = "".join(f"\n  {problem}" for problem in ordered[:MAX_LISTED_PROBLEMS])
        more = len(ordered) - MAX_LISTED_PROBLEMS
        message = (
            f"{source}: {plural(len(ordered), 'problem')}"
            + (f" in {plural(rows, 'row')}" if rows else "")
            + f"; nothing was submitted:{listed}"
            + (f"\n  ... and {more} more" if more > 0 else "")
        )
    return KandinskyManifestError(message, problems=ordered, source=source)
