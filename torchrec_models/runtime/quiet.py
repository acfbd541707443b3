"""Silences library chatter that says nothing about the user's run."""
from __future__ import annotations

import logging
import warnings


def quiet_library_noise() -> None:
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", message=".*is_fx_tracing.*")
    warnings.filterwarnings("ignore", message=".*TypedStorage is deprecated.*")
    warnings.filterwarnings("ignore", message=".*Sparse invariant checks.*")
    for name in ("torchrec", "torch.fx", "torch.distributed.elastic", "fbgemm_gpu", "torchx"):
        logging.getLogger(name).setLevel(logging.ERROR)
    # torchrec's planner logs this on the root logger for every data-parallel table (which has none by design)
    if _no_spec_chatter not in logging.getLogger().filters:
        logging.getLogger().addFilter(_no_spec_chatter)


def _no_spec_chatter(record: logging.LogRecord) -> bool:
    return not str(record.msg).startswith("Sharding spec not found for ")
