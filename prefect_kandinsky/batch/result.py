"""What a batch run returns: every row's record and the batch's spend."""

from __future__ import annotations

from decimal import Decimal

from pydantic import BaseModel, Field

from prefect_kandinsky.batch.ledger import RowRecord, summarize


class BatchResult(BaseModel):
    """Every row's outcome, and what the batch cost."""

    batch_id: str = Field(description="The batch's identity: the manifest or batch_id.")
    ledger: str = Field(description="Where the rows' records are.")
    rows: list[RowRecord] = Field(description="One record per row, in manifest order.")
    estimated_cost_usd: Decimal = Field(
        description="Documented price of what this run set out to submit."
    )
    unknown_cost_rows: int = Field(
        default=0, description="Rows of this run without a documented price (256P)."
    )

    @property
    def counts(self) -> dict[str, int]:
        """Rows per state, e.g. ``{"stored": 198, "failed": 2}``."""
        return summarize(self.rows)

    @property
    def complete(self) -> bool:
        """Whether every row's video is stored."""
        return all(row.done for row in self.rows)

    @property
    def charged_usd(self) -> Decimal:
        """What the gateway charged for the batch so far, by the documented prices."""
        return sum((row.charged_usd for row in self.rows), Decimal(0))

    def summary(self) -> str:
        """One line: counts and spend."""
        counts = ", ".join(f"{n} {state}" for state, n in sorted(self.counts.items()))
        return (
            f"{len(self.rows)} rows: {counts}; ${self.charged_usd:.2f} charged "
            f"(estimated ${self.estimated_cost_usd:.2f} for this run)"
        )


# -- deciding what each row needs --------------------------------------------------------------
