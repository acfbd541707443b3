"""Two towers over one EmbeddingBagCollection (sharded like the ranker's), trained with a
softmax over in-batch negatives gathered from every rank, with the logQ correction."""
from __future__ import annotations

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_fn
from torch import nn
from torchrec.datasets.utils import Batch
from torchrec.modules.embedding_modules import EmbeddingBagCollection
from torchrec.modules.mlp import MLP
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from torchrec_models.config import ModelConfig, feature_names
from torchrec_models.sharding.tables import embedding_bag_configs


def _tower(in_features: int, layers: list[int], device: torch.device) -> nn.Module:
    """An MLP whose last layer is linear (the vector is normalized afterwards)."""
    hidden = MLP(in_features, layers[:-1], device=device) if len(layers) > 1 else nn.Identity()
    width = layers[-2] if len(layers) > 1 else in_features
    return nn.Sequential(hidden, nn.Linear(width, layers[-1], device=device))


def _gather_rows(local: torch.Tensor) -> torch.Tensor:
    """Every rank's rows in rank order; gradients flow back to the rank that owns each row."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return local
    return torch.cat(dist_fn.all_gather(local), dim=0)


def _gather_ids(local: torch.Tensor) -> torch.Tensor:
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return local
    parts = [torch.empty_like(local) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, local)
    return torch.cat(parts)


class TwoTower(nn.Module):
    """``user_keys`` features pool into the user tower, ``item_keys`` into the item tower; both
    towers end L2-normalized. A batch's labels are the positive item's index."""

    def __init__(self, ebc: EmbeddingBagCollection, user_keys: list[str], item_keys: list[str],
                 layers: list[int], temperature: float, num_items: int, device: torch.device,
                 extra_negatives: int = 0) -> None:
        super().__init__()
        dim = ebc.embedding_bag_configs()[0].embedding_dim
        self.embedding_bag_collection = ebc
        self.user_keys, self.item_keys = list(user_keys), list(item_keys)
        self.user_tower = _tower(dim * len(user_keys), layers, device)
        self.item_tower = _tower(dim * len(item_keys), layers, device)
        self.temperature = temperature
        self.extra_negatives = extra_negatives
        self.data_device = device if device.type != "meta" else torch.device("cpu")
        # a plain tensor, not a buffer: data, not a weight (never checkpointed nor broadcast)
        self.log_q = torch.zeros(num_items, device=self.data_device)

    def set_log_q(self, log_q: torch.Tensor) -> None:
        """The logQ correction: log of each item's sampling probability (zeros = no correction)."""
        self.log_q = log_q.to(self.data_device)

    def dense_parts(self) -> list[nn.Module]:
        return [self.user_tower, self.item_tower]

    def towers(self, features: KeyedJaggedTensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(user vectors, item vectors), both [B, layers[-1]] and unit length."""
        pooled = self.embedding_bag_collection(features).to_dict()
        users = torch.cat([pooled[k] for k in self.user_keys], dim=1)
        items = torch.cat([pooled[k] for k in self.item_keys], dim=1)
        return (nn.functional.normalize(self.user_tower(users), dim=1),
                nn.functional.normalize(self.item_tower(items), dim=1))

    def forward(self, batch: Batch) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        users, items = self.towers(batch.sparse_features)
        logits, target = in_batch_logits(users, items, batch.labels, self.log_q, self.temperature,
                                         self.extra_negatives)
        loss = nn.functional.cross_entropy(logits, target)
        return loss, (loss.detach(), logits.detach(), target)


def in_batch_logits(users: torch.Tensor, items: torch.Tensor, item_ids: torch.Tensor, log_q: torch.Tensor,
                    temperature: float, extra: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """[B, global B + extra] logits of each user against every rank's positives (minus log q of
    each) and the ``extra`` uniformly drawn items of the batch's last rows (minus log of their
    uniform probability), and each row's target column; another copy of a row's own positive item
    is not a negative (-inf)."""
    rows = len(item_ids) - extra
    negatives, negative_ids = items[rows:], item_ids[rows:]
    users, items, item_ids = users[:rows], items[:rows], item_ids[:rows]
    all_items, all_ids = _gather_rows(items), _gather_ids(item_ids)
    offset = (dist.get_rank() if dist.is_initialized() else 0) * len(item_ids)
    target = torch.arange(len(item_ids), device=users.device) + offset
    logits = users @ all_items.T / temperature - log_q[all_ids]
    if extra:
        uniform = -torch.log(torch.tensor(float(len(log_q)), device=users.device))
        logits = torch.cat([logits, users @ negatives.T / temperature - uniform], dim=1)
        all_ids = torch.cat([all_ids, negative_ids])
    duplicate = item_ids[:, None] == all_ids[None, :]
    duplicate[torch.arange(len(item_ids)), target] = False
    return logits.masked_fill(duplicate, float("-inf")), target


torch.fx.wrap("in_batch_logits")  # a leaf for the train pipeline's tracer (it only looks for table inputs)


def build_two_tower(cfg: ModelConfig, dense_device: torch.device, seed: int,
                    table_device: torch.device | str = "meta") -> TwoTower:
    """Tables on ``table_device`` (meta: the sharder materializes each rank's shards), towers seeded."""
    ebc = EmbeddingBagCollection(tables=embedding_bag_configs(cfg), device=torch.device(table_device))
    keys = feature_names(cfg.num_sparse_features)
    split = cfg.user_feature_count
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return TwoTower(ebc, keys[:split], keys[split:], list(cfg.tower_mlp), cfg.temperature,
                        cfg.table_rows()[split], torch.device(dense_device), cfg.extra_negatives)
