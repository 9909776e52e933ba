"""Social units and device accounts (floor 2): who may register, and which unit owns what."""

from gateway.directory.directory import (
    ACCOUNT,
    PASSWORD_LENGTH,
    UNIT,
    UNIT_KINDS,
    Account,
    Directory,
    DirectoryError,
    Policy,
    Unit,
    generate_password,
)

__all__ = [
    "ACCOUNT",
    "PASSWORD_LENGTH",
    "UNIT",
    "UNIT_KINDS",
    "Account",
    "Directory",
    "DirectoryError",
    "Policy",
    "Unit",
    "generate_password",
]
