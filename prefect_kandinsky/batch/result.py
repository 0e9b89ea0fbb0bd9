"""What a batch run returns: every row's record and the batch's spend."""

from __future__ import annotations

from decimal import Decimal

from pydantic import BaseModel, Field

from prefect_kandinsky.batch.ledger import RowRecord, summarize
from prefect_kandinsky.gateway.prices import plural


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
    charged_before_usd: Decimal = Field(
        default=Decimal(0),
        description="What earlier runs of the batch were charged (documented prices).",
    )
    unpriced_before: int = Field(
        default=0,
        description="Rows charged by earlier runs at a price the documentation does not give.",
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
        """What the gateway charged for the batch so far, by the documented prices.

        Rows charged at a price the documentation does not give (256P) are not in it: see
        :attr:`unpriced_rows` and :attr:`charged_label`.
        """
        return sum((row.charged_usd for row in self.rows), Decimal(0))

    @property
    def unpriced_rows(self) -> int:
        """Rows charged at a price the documentation does not give (256P)."""
        return sum(1 for row in self.rows if row.charge_unknown)

    @property
    def charged_label(self) -> str:
        """What the batch was charged in all, for people: never $0.00 for an unknown price."""
        return _charge(self.charged_usd, self.unpriced_rows)

    @property
    def charged_this_run_label(self) -> str:
        """What this run added to the charges, for people: "no new charges" when nothing."""
        new = self.charged_usd - self.charged_before_usd
        unpriced = max(self.unpriced_rows - self.unpriced_before, 0)
        if not new and not unpriced:
            return "no new charges"
        return _charge(new, unpriced)

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
        ambiguous = ""
        if self.ambiguous_attempts:
            more = f"up to ${self.ambiguous_usd:.2f}" if self.ambiguous_usd else "an unknown amount"
            ambiguous = (
                f"; {plural(self.ambiguous_attempts, 'ambiguous submit')} may have cost {more} more"
            )
        return (
            f"{plural(len(self.rows), 'row')}: {counts}{adopted}; charged {self.charged_label} "
            f"in all, this run: {self.charged_this_run_label}{ambiguous}"
        )


def _charge(known: Decimal, unpriced: int) -> str:
    if unpriced and not known:
        return f"unknown ({plural(unpriced, 'row')} without a documented price)"
    text = f"${known:.2f}"
    if unpriced:
        text += f" plus {plural(unpriced, 'row')} without a documented price (unknown)"
    return text
