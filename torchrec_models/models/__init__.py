"""Model families: one builder for every ``model.arch``."""
from __future__ import annotations

import torch
from torch import nn

from torchrec_models.config import ModelConfig
from torchrec_models.models.dlrm import RankingModel, set_output_bias
from torchrec_models.models.mlp import fuse_relu_layers


def build_model(
    cfg: ModelConfig,
    dense_device: torch.device,
    seed: int,
    autocast_dtype: torch.dtype | None = None,
    table_device: torch.device | str = "meta",
) -> nn.Module:
    """The model ``cfg.arch`` names (its task builds it): tables on ``table_device``, the dense
    part seeded on ``dense_device``. Its Linear + ReLU layers take the fused CPU kernel when
    ``train.cpu_mlp`` has it in place (same parameters either way)."""
    from torchrec_models.tasks import task_for_arch

    model = task_for_arch(cfg.arch).build_model(cfg, dense_device, seed, autocast_dtype, table_device)
    fuse_relu_layers(model)
    return model


def compile_dense_parts(model: nn.Module) -> None:
    """Compiles each dense part in place (Inductor fuses the element-wise ops around the GEMMs);
    parameter names, hence checkpoints, do not change. The interaction then takes the stacked
    pooled embeddings (a tensor, which the compiled graph is traced for)."""
    model.model.pooled_interaction = False
    for part in model.dense_parts():
        part.compile(dynamic=False)


__all__ = ["RankingModel", "build_model", "compile_dense_parts", "set_output_bias"]
