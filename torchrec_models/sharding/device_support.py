"""Settings a device cannot run, found from the config alone (no torchrec import: the CLI checks
them before it starts any rank)."""
from __future__ import annotations

from torchrec_models.config import Config, ConfigError


def validate_for_device(cfg: Config, device_type: str) -> None:
    """Rejects combinations the device cannot run, naming the key."""
    if device_type != "cuda" and cfg.sharding.kernel == "fused_uvm_caching":
        raise ConfigError("sharding.kernel", "fused_uvm_caching needs a CUDA device")
    if device_type != "cuda" and cfg.sharding.qcomm == "bf16":
        raise ConfigError("sharding.qcomm", "bf16 needs a CUDA device (gloo has no bf16 codec; fp16 runs on CPU)")
