"""Exact number handling for billing: parsing inputs, rounding to öre, JSON with real numbers.

Money never passes through ``float``. Inputs that arrive as floats (``json.loads`` without
``parse_float``) are converted through their shortest ``repr``, which is the decimal the sender
wrote. Arithmetic inside the rating engine is done on ``int`` and ``Fraction`` so that
interpolated values stay exact; only presentation rounds.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import date, datetime
from decimal import Decimal, InvalidOperation
from enum import Enum
from fractions import Fraction
from typing import Any

Exact = int | Fraction
CENT_PLACES = 2
_POW10 = tuple(10**places for places in range(30))


def to_exact(value: Decimal) -> Exact:
    """The exact rational value of a finite Decimal, as ``int`` whenever it is whole."""
    if value == value.to_integral_value():
        return int(value)
    return Fraction(value)


def parse_number(value: object) -> Exact:
    """Read a JSON-ish number (int, Decimal, Fraction, numeric str, float) exactly.

    Raises ``ValueError`` with a short reason when the value is not a finite number.
    """
    if isinstance(value, bool):
        raise ValueError(f"expected a number, got {value!r}")
    if isinstance(value, int | Fraction):
        return value
    if isinstance(value, float):
        value = repr(value)
    if isinstance(value, str):
        try:
            value = Decimal(value.strip())
        except InvalidOperation:
            raise ValueError(f"expected a number, got {value!r}") from None
    if isinstance(value, Decimal):
        if not value.is_finite():
            raise ValueError(f"expected a finite number, got {value}")
        return to_exact(value)
    raise ValueError(f"expected a number, got {type(value).__name__} {value!r}")


def _ratio(value: Exact, divisor: int) -> tuple[int, int]:
    if type(value) is int:  # the common case first: this runs for every exported number
        return value, divisor
    if isinstance(value, int):
        return value, divisor
    if not isinstance(value, Fraction):
        raise TypeError(f"exact money arithmetic needs int or Fraction, got {type(value).__name__}")
    return value.numerator, value.denominator * divisor


def _half_up(numerator: int, denominator: int, places: int) -> int:
    """numerator/denominator x 10^places, rounded half away from zero, as an int."""
    scale = _POW10[places] if places < len(_POW10) else 10**places
    if numerator >= 0:
        return (2 * numerator * scale + denominator) // (2 * denominator)
    return -((2 * -numerator * scale + denominator) // (2 * denominator))


def round_half_up(value: Exact, places: int = CENT_PLACES) -> Decimal:
    """Round an exact value to ``places`` decimals, halves away from zero (ROUND_HALF_UP)."""
    numerator, denominator = _ratio(value, 1)
    return Decimal(_half_up(numerator, denominator, places)).scaleb(-places)


def round_money(value: Exact) -> Decimal:
    """An amount rounded to the currency's minor unit (öre, cent): 0.01."""
    return round_half_up(value, CENT_PLACES)


def quantity(
    value: Exact, divisor: int = 1, *, min_places: int = 3, max_places: int = 6
) -> Decimal:
    """``value / divisor`` for display: at most ``max_places`` decimals, trailing zeros trimmed
    down to ``min_places``. Money is never computed from this rounded form."""
    if type(value) is int and value >= 0 and max_places < len(_POW10):
        # _half_up inlined for the common case: a CDR exports dozens of these
        digits = (2 * value * _POW10[max_places] + divisor) // (2 * divisor)
    else:
        digits = _half_up(*_ratio(value, divisor), max_places)
    places = max_places
    while places > min_places and digits % 10 == 0:
        digits //= 10
        places -= 1
    return Decimal(digits).scaleb(-places)


def ratio(value: Exact) -> tuple[int, int]:
    """``(numerator, denominator)`` of an exact value, so hot loops can stay in ``int``."""
    return _ratio(value, 1)


def cents_to_decimal(cents: int) -> Decimal:
    """A whole number of öre (cents) as the 0.01-exponent Decimal :func:`round_money` gives."""
    return Decimal(cents).scaleb(-CENT_PLACES)


def round_ratio_to_cents(numerator: int, denominator: int) -> int:
    """``numerator/denominator`` currency units in whole öre, ROUND_HALF_UP as
    :func:`round_money`. The ratio may be unreduced: one division at the end is much cheaper
    than ``Fraction`` normalising (gcd) after every multiplication."""
    return _half_up(numerator, denominator, CENT_PLACES)


def to_jsonable(value: Any) -> Any:
    """Turn models' dumps into plain JSON shapes, keeping Decimals as Decimals."""
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, datetime):
        text = value.isoformat()
        return text[:-6] + "Z" if text.endswith("+00:00") else text
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, Mapping):
        return {str(key): to_jsonable(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [to_jsonable(item) for item in value]
    return value


def dumps(value: Any) -> str:
    """JSON text in which every Decimal is written as a JSON number, digit for digit.

    The standard encoder can only write Decimals as strings or via float; OCPI wants numbers.
    """
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, Decimal):
        if not value.is_finite():
            raise ValueError(f"cannot write {value} as a JSON number")
        return format(value, "f")
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, Mapping):
        items = (f"{json.dumps(str(k), ensure_ascii=False)}:{dumps(v)}" for k, v in value.items())
        return "{" + ",".join(items) + "}"
    if isinstance(value, Sequence):
        return "[" + ",".join(dumps(item) for item in value) + "]"
    converted = to_jsonable(value)
    if converted is value:
        raise TypeError(f"cannot write {type(value).__name__} as JSON")
    return dumps(converted)
