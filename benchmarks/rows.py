"""What a benchmark row is: a named training configuration at a world size."""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Row:
    """One measurement: ``config`` + ``overrides`` trained at ``world_size`` ranks.

    ``impl`` is ``torchrec`` (this package) or ``baseline`` (plain PyTorch: nn.EmbeddingBag + DDP).
    With ``independent`` the ranks start together but each trains alone, a world of one with all
    the tables, and the row's rate is the sum of theirs: what ``world_size`` processes on this
    machine do without exchanging anything, the ceiling of the same row trained as one job.
    """

    name: str
    config: str
    overrides: tuple[str, ...] = ()
    world_size: int = 1
    impl: str = "torchrec"
    independent: bool = False
    warmup_steps: int = 5
    window_steps: int = 5
    windows: int = 6
    split_steps: int = 3
    tags: dict[str, str] = field(default_factory=dict, hash=False)

    @property
    def measured_steps(self) -> int:
        return self.warmup_steps + self.window_steps * self.windows
