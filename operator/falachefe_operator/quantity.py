"""Kubernetes resource quantities ("250m", "1.5", "2Ki") as exact decimals.

The same parse as ``kubernetes.utils.parse_quantity`` (tests hold the two
to the same answers), without importing that library (see ``credentials``).
"""

from __future__ import annotations

from decimal import Decimal, InvalidOperation

_EXPONENTS = {"n": -3, "u": -2, "m": -1, "K": 1, "k": 1, "M": 2, "G": 3, "T": 4, "P": 5, "E": 6}


def parse_quantity(quantity: object) -> Decimal:
    """``quantity`` as a Decimal; ValueError names what is wrong with it."""
    if isinstance(quantity, int | float | Decimal):
        return Decimal(quantity)
    text = str(quantity)
    number, suffix = text, ""
    if len(text) >= 2 and text[-1] == "i" and text[-2] in _EXPONENTS:
        number, suffix = text[:-2], text[-2:]
    elif text[-1:] in _EXPONENTS:
        number, suffix = text[:-1], text[-1:]
    try:
        value = Decimal(number)
    except InvalidOperation:
        raise ValueError(f"Invalid number format: {number}") from None
    if not suffix:
        return value
    if suffix == "ki":
        raise ValueError(f"{text} has unknown suffix")
    base = 1024 if len(suffix) == 2 else 1000
    return value * (base ** Decimal(_EXPONENTS[suffix[0]]))
