"""Prices per device-hour and the cost of examples at a measured or forecast rate."""
from __future__ import annotations

DEFAULT_PRICES_USD_PER_HOUR = {
    "H100": 3.00,  # per GPU-hour
    "H200": 3.80,
    "A100": 1.80,
    "vCPU": 0.045,  # per vCPU-hour
}


def parse_prices(items: list[str] | tuple[str, ...]) -> dict[str, float]:
    """Defaults overridden by ``KIND=USD_PER_HOUR`` items; a bad item raises ValueError naming it."""
    prices = dict(DEFAULT_PRICES_USD_PER_HOUR)
    for item in items:
        kind, sep, value = item.partition("=")
        try:
            price = float(value)
        except ValueError:
            price = -1.0
        if not sep or not kind or price < 0:
            raise ValueError(f"--price {item!r}: expected KIND=USD_PER_HOUR with a price >= 0")
        prices[kind] = price
    return prices


def usd_per_million_examples(usd_per_device_hour: float, devices: float, examples_per_sec: float) -> float:
    """hourly price x devices / (examples/s x 3600) x 1e6."""
    if examples_per_sec <= 0:
        raise ValueError("examples_per_sec must be > 0")
    return usd_per_device_hour * devices / (examples_per_sec * 3600.0) * 1e6
