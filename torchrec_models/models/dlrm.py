"""DLRM, DLRM-DCNv2 and DLRM-Projection from torchrec.models.dlrm, wrapped for training, with two
faster parts of the same function (the sparse arch without a copy, the symmetric interaction).

Tables are built on the meta device (the sharder materializes only each rank's shards);
the dense part is built on the training device from a seeded generator, so the same
seed gives the same dense weights whatever the world size or plan.
"""
from __future__ import annotations

import math

import torch
from torch import nn
from torchrec.datasets.utils import Batch
from torchrec.models.dlrm import DLRM, DLRM_DCN, DLRM_Projection
from torchrec.modules.embedding_modules import EmbeddingBagCollection
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from torchrec_models.config import ModelConfig
from torchrec_models.models.interaction import SymmetricInteractionArch
from torchrec_models.models.sparse_stack import StackedSparseArch
from torchrec_models.sharding.tables import embedding_bag_configs


DENSE_PARTS = ("dense_arch", "inter_arch", "over_arch")


class RankingModel(nn.Module):
    """Wraps a DLRM-family module: batch in, (loss, (loss, logits, labels)) out.

    ``autocast_dtype`` (bf16) covers the dense part; tables, loss and optimizer state stay fp32.
    """

    def __init__(self, dlrm: DLRM, device_type: str, autocast_dtype: torch.dtype | None = None) -> None:
        super().__init__()
        self.model = dlrm
        self.loss_fn = nn.BCEWithLogitsLoss()
        self.device_type = device_type  # fixed here: the pipeline traces forward symbolically
        self.autocast_dtype = autocast_dtype
        self.nominal_rows: int | None = None  # set when ranks take uneven shares of each global batch

    def forward(self, batch: Batch) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        logits = self.logits(batch)
        loss = self.loss_fn(logits, batch.labels.float())
        if self.nominal_rows is not None:
            # the sum over this rank's rows over the equal share: the ranks' average (DDP's) stays
            # the mean over the global batch, whatever each rank's share
            loss = loss * (logits.size(0) / self.nominal_rows)
        return loss, (loss.detach(), logits.detach(), batch.labels.detach())

    def dense_parts(self) -> list[nn.Module]:
        """The bottom MLP, the interaction and the top MLP (what ``train.compile`` compiles)."""
        return [getattr(self.model, name) for name in DENSE_PARTS]

    def logits(self, batch: Batch) -> torch.Tensor:
        enabled = self.autocast_dtype is not None
        with torch.autocast(self.device_type, dtype=self.autocast_dtype or torch.bfloat16, enabled=enabled):
            logits = self.model(batch.dense_features, batch.sparse_features)
        return logits.float().squeeze(-1)


def build_ranker(
    cfg: ModelConfig,
    dense_device: torch.device,
    seed: int,
    autocast_dtype: torch.dtype | None = None,
    table_device: torch.device | str = "meta",
) -> RankingModel:
    """Builds the ranker with tables on ``table_device`` and a seeded dense part on ``dense_device``."""
    ebc = EmbeddingBagCollection(tables=embedding_bag_configs(cfg), device=torch.device(table_device))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        dlrm = _build_dlrm(cfg, ebc, dense_device)
    return RankingModel(dlrm, torch.device(dense_device).type, autocast_dtype)


def set_output_bias(model: RankingModel, label_rate: float) -> None:
    """Starts the logit's bias at the log-odds of ``label_rate``: the first prediction is the base
    rate (NE 1) instead of 0.5, so a short run does not spend its steps on the mean."""
    rate = min(max(label_rate, 1e-4), 1 - 1e-4)
    last = model.model.over_arch.model[-1]
    with torch.no_grad():
        last.bias.fill_(math.log(rate / (1 - rate)))


class _SparseFirst:
    """DLRM's forward with the table lookups started before the bottom MLP: a sharded collection
    returns its pooled embeddings while their all-to-all is still in flight, so the bottom MLP runs
    during it, and in backward (autograd takes the later-made ops first) its gradient is computed
    while the embeddings' gradients travel back. Same arithmetic and module tree as torchrec's.
    With ``pooled_interaction`` the interaction takes the pooled output as it is (no stacked copy)."""

    pooled_interaction = False

    def forward(self, dense_features: torch.Tensor, sparse_features: KeyedJaggedTensor) -> torch.Tensor:
        pooled = self.sparse_arch.embedding_bag_collection(sparse_features)
        embedded_dense = self.dense_arch(dense_features)
        if self.pooled_interaction:
            arch = self.sparse_arch
            interaction = self.inter_arch.forward_pooled(embedded_dense, pooled, arch.sparse_feature_names, arch.D)
        else:
            interaction = self.inter_arch(dense_features=embedded_dense, sparse_features=self.sparse_arch.stack(pooled))
        return self.over_arch(interaction)


class SparseFirstDLRM(_SparseFirst, DLRM):
    pass


class SparseFirstDLRM_DCN(_SparseFirst, DLRM_DCN):
    pass


class SparseFirstDLRM_Projection(_SparseFirst, DLRM_Projection):
    pass


def _build_dlrm(cfg: ModelConfig, ebc: EmbeddingBagCollection, dense_device: torch.device) -> DLRM:
    common = dict(
        embedding_bag_collection=ebc,
        dense_in_features=cfg.dense_in_features,
        dense_arch_layer_sizes=list(cfg.bottom_mlp),
        over_arch_layer_sizes=list(cfg.top_mlp),
        dense_device=dense_device,
    )
    if cfg.arch == "dcn":
        dlrm = SparseFirstDLRM_DCN(**common, dcn_num_layers=cfg.dcn_num_layers, dcn_low_rank_dim=cfg.dcn_low_rank_dim)
    elif cfg.arch == "projection":
        dlrm = SparseFirstDLRM_Projection(
            **common,
            interaction_branch1_layer_sizes=list(cfg.projection_branch1),
            interaction_branch2_layer_sizes=list(cfg.projection_branch2),
        )
    else:
        dlrm = SparseFirstDLRM(**common)
        dlrm.inter_arch = SymmetricInteractionArch(dlrm.inter_arch.F, dense_device)
        dlrm.pooled_interaction = True
    dlrm.sparse_arch = StackedSparseArch(ebc)
    return dlrm
