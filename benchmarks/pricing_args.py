"""--price flags -> a price table, or one clear error."""
from __future__ import annotations

import sys

from torchrec_models.sharding.pricing import parse_prices


def prices_or_exit(items: list[str]) -> dict[str, float]:
    try:
        return parse_prices(items)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
