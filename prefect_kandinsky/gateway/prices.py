"""The gateway's documented prices: one video's, and a batch's by resolution and duration.

The price is per second of video and depends on the resolution; 256P has no documented price,
so a 256P video is priced as unknown (None), never as $0.00.
"""

from __future__ import annotations

from collections.abc import Iterable
from decimal import Decimal
from typing import Protocol

from pydantic import BaseModel, ConfigDict, Field

from prefect_kandinsky.gateway.exceptions import KandinskyBudgetError

PRICE_PER_SECOND_USD: dict[str, Decimal] = {
    "512P": Decimal("0.04"),
    "1024P": Decimal("0.12"),
}
"""The gateway's documented price table. 256P has no documented price."""


class Priced(Protocol):
    """Anything priced like a video: a resolution and a duration in seconds."""

    @property
    def resolution(self) -> str: ...

    @property
    def duration_seconds(self) -> int: ...


def plural(count: int, word: str) -> str:
    """``1 row``, ``2 rows``."""
    return f"{count} {word}" + ("" if count == 1 else "s")


def estimate_cost_usd(resolution: str, duration_seconds: int) -> Decimal | None:
    """Price a video by the documented table; None where no price is documented (256P)."""
    rate = PRICE_PER_SECOND_USD.get(resolution)
    if rate is None:
        return None
    return (rate * duration_seconds).quantize(Decimal("0.01"))


def format_cost(cost: Decimal | None) -> str:
    """Render a cost estimate for people: ``$0.20``, or ``unknown``."""
    return "unknown" if cost is None else f"${cost:.2f}"


class CostLine(BaseModel):
    """The rows of a batch at one resolution and duration, and their documented price."""

    model_config = ConfigDict(frozen=True)

    resolution: str = Field(description="The resolution preset.")
    duration_seconds: int = Field(description="The duration in seconds.")
    rows: int = Field(description="Rows at this resolution and duration.")
    unit_price_usd: Decimal | None = Field(
        description="Documented price of one video; None where none is documented (256P)."
    )
    subtotal_usd: Decimal | None = Field(
        description="rows x unit price; None where no price is documented."
    )

    def __str__(self) -> str:
        what = f"{self.resolution} {self.duration_seconds}s: {plural(self.rows, 'row')}"
        if self.unit_price_usd is None or self.subtotal_usd is None:
            return f"{what}, no documented price (not counted)"
        return f"{what} x {format_cost(self.unit_price_usd)} = {format_cost(self.subtotal_usd)}"


class CostEstimate(BaseModel):
    """The documented price of a batch, by resolution and duration."""

    model_config = ConfigDict(frozen=True)

    total_usd: Decimal = Field(description="Sum of the documented prices of the rows.")
    rows: int = Field(description="Rows in the batch.")
    unknown_rows: int = Field(
        description="Rows without a documented price (256P), not counted in total_usd."
    )
    lines: list[CostLine] = Field(
        description="One line per resolution and duration, the costliest first, the rows "
        "without a documented price last."
    )

    def table(self) -> str:
        """The estimate as a markdown table, with a total row."""
        out = [
            "| Resolution | Duration | Rows | Unit price | Subtotal |",
            "|---|---:|---:|---:|---:|",
        ]
        for line in self.lines:
            priced = line.subtotal_usd is not None
            out.append(
                f"| {line.resolution} | {line.duration_seconds}s | {line.rows} | "
                f"{format_cost(line.unit_price_usd)} | "
                f"{format_cost(line.subtotal_usd) if priced else 'not counted'} |"
            )
        out.append(f"| **Total** | | {self.rows} | | **{format_cost(self.total_usd)}** |")
        return "\n".join(out)


def estimate_batch_cost(rows: Iterable[Priced]) -> CostEstimate:
    """Price every row by the documented table, grouped by resolution and duration."""
    counts: dict[tuple[str, int], int] = {}
    for row in rows:
        group = (row.resolution, row.duration_seconds)
        counts[group] = counts.get(group, 0) + 1
    lines: list[CostLine] = []
    for (resolution, seconds), count in counts.items():
        unit = estimate_cost_usd(resolution, seconds)
        lines.append(
            CostLine(
                resolution=resolution,
                duration_seconds=seconds,
                rows=count,
                unit_price_usd=unit,
                subtotal_usd=None if unit is None else unit * count,
            )
        )
    lines.sort(
        key=lambda line: (
            line.subtotal_usd is None,
            -(line.subtotal_usd or Decimal(0)),
            PRICE_PER_SECOND_USD.get(line.resolution, Decimal(0)),
            line.resolution,
            line.duration_seconds,
        )
    )
    return CostEstimate(
        total_usd=sum((line.subtotal_usd or Decimal(0) for line in lines), Decimal("0.00")),
        rows=sum(line.rows for line in lines),
        unknown_rows=sum(line.rows for line in lines if line.subtotal_usd is None),
        lines=lines,
    )


def _usd(value: Decimal | float | int, name: str) -> Decimal:
    if isinstance(value, bool) or not isinstance(value, (Decimal, float, int)):
        raise ValueError(f"{name} must be a number of US dollars >= 0; got {value!r}")
    amount = value if isinstance(value, Decimal) else Decimal(str(value))
    if not amount.is_finite() or amount < 0:
        raise ValueError(f"{name} must be a number of US dollars >= 0; got {value!r}")
    return amount


def check_budget(
    estimate: CostEstimate,
    max_cost_usd: Decimal | float | None,
    *,
    already_charged_usd: Decimal | float = Decimal(0),
) -> list[str]:
    """Refuse a batch over its budget; return warnings about what the estimate leaves out.

    The batch is refused when ``already_charged_usd`` (spent by earlier runs of the same
    batch) plus the estimate exceeds ``max_cost_usd``; None means no limit.

    Raises:
        KandinskyBudgetError: over the budget, with the breakdown by resolution and duration.
        ValueError: ``max_cost_usd`` or ``already_charged_usd`` below 0.
    """
    charged = _usd(already_charged_usd, "already_charged_usd")
    limit = None if max_cost_usd is None else _usd(max_cost_usd, "max_cost_usd")
    warnings: list[str] = []
    unknown: dict[str, int] = {}
    for line in estimate.lines:
        if line.subtotal_usd is None:
            unknown[line.resolution] = unknown.get(line.resolution, 0) + line.rows
    for resolution, count in unknown.items():
        has = "has" if count == 1 else "have"
        is_ = "is" if count == 1 else "are"
        warnings.append(
            f"{plural(count, 'row')} at {resolution} {has} no documented price and {is_} "
            f"not counted in {format_cost(estimate.total_usd)}"
        )
    if limit is not None and charged + estimate.total_usd > limit:
        plus = (
            f" (plus {format_cost(charged)} already charged by earlier runs of this batch)"
            if charged
            else ""
        )
        breakdown = "".join(f"\n  {line}" for line in estimate.lines)
        raise KandinskyBudgetError(
            f"The batch would cost {format_cost(estimate.total_usd)} by the documented "
            f"prices{plus}, over max_cost_usd {format_cost(limit)}; nothing was submitted:"
            f"{breakdown}\nRaise max_cost_usd, or remove rows, to run it.",
            estimate=estimate,
            max_cost_usd=limit,
            already_charged_usd=charged,
        )
    return warnings
