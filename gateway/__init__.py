"""GB/T 28181 access gateway."""

__version__ = "0.1.0"
