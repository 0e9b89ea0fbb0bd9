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

    @property
    def ambiguous_usd(self) -> Decimal:
        """What submits whose answer was lost, and whose job is unknown, may have cost on top
        of ``charged_usd`` (adopted ones are in ``charged_usd``): the gateway's bill is between
        the two sums."""
        return sum((row.ambiguous_usd for row in self.rows), Decimal(0))

    @property
    def ambiguous_attempts(self) -> int:
        """Submits whose answer was lost and whose job is unknown, over every row."""
        return sum(row.ambiguous_attempts for row in self.rows)

    @property
    def adopted_rows(self) -> int:
        """Rows whose job was adopted from its callback after the submit's answer was lost."""
        return sum(row.adopted for row in self.rows)

    def summary(self) -> str:
        """One line: counts and spend."""
        counts = ", ".join(f"{n} {state}" for state, n in sorted(self.counts.items()))
        adopted = f", {self.adopted_rows} adopted from their callback" if self.adopted_rows else ""
        ambiguous = (
            f"; {self.ambiguous_attempts} ambiguous submits may have cost up to "
            f"${self.ambiguous_usd:.2f} more"
            if self.ambiguous_attempts
            else ""
        )
        return (
            f"{len(self.rows)} rows: {counts}{adopted}; ${self.charged_usd:.2f} charged "
            f"(estimated ${self.estimated_cost_usd:.2f} for this run){ambiguous}"
        )


# -- deciding what each row needs --------------------------------------------------------------
