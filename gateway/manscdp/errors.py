"""Errors of the MANSCDP layer."""

from __future__ import annotations


class DecodeError(ValueError):
    """Bytes that are not a usable MANSCDP message; the message says why (one short reason)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason
