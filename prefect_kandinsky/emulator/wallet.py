"""The emulated wallet: a balance in USD and the ledger of every movement.

Submits are debited by the documented price, a job that ends ERROR is refunded (the gateway
documents ERROR as not charged), and tests set or top up the balance. A :class:`Wallet` holds
no lock of its own: :class:`~prefect_kandinsky.emulator.state.EmulatorState` calls it under its
lock, with the time from its clock.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any

from .errors import InsufficientBalance
from .records import LedgerEntry


class Wallet:
    """A balance and its ledger, oldest entry first."""

    def __init__(self, balance_usd: Decimal) -> None:
        self.balance_usd = balance_usd
        self.entries: list[LedgerEntry] = []

    def reset(self, balance_usd: Decimal) -> None:
        """Start again at ``balance_usd`` with an empty ledger."""
        self.balance_usd = balance_usd
        self.entries.clear()

    def debit(self, amount_usd: Decimal, at: datetime, request_id: str) -> None:
        """Take the price of a submit.

        Raises:
            InsufficientBalance: the balance is below ``amount_usd`` (nothing is taken).
        """
        if amount_usd > self.balance_usd:
            raise InsufficientBalance()
        self.balance_usd -= amount_usd
        self.entries.append(LedgerEntry(at, "debit", -amount_usd, self.balance_usd, request_id))

    def refund(self, amount_usd: Decimal, at: datetime, request_id: str) -> None:
        """Give back what a job was charged."""
        self.balance_usd += amount_usd
        self.entries.append(LedgerEntry(at, "refund", amount_usd, self.balance_usd, request_id))

    def adjust(self, balance_usd: Decimal, at: datetime) -> Decimal:
        """Set the balance, recorded as an adjustment by the difference; returns it.

        Raises:
            ValueError: ``balance_usd`` is negative.
        """
        if balance_usd < 0:
            raise ValueError(f"the balance cannot be negative; got {balance_usd}")
        delta = balance_usd - self.balance_usd
        self.balance_usd = balance_usd
        self.entries.append(LedgerEntry(at, "adjust", delta, balance_usd))
        return balance_usd

    def to_json(self) -> dict[str, Any]:
        """Balance and ledger as JSON (``GET /_emulator/wallet``)."""
        return {
            "balance_usd": str(self.balance_usd),
            "ledger": [entry.to_json() for entry in self.entries],
        }
