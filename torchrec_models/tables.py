"""Table specs from the model config: one EmbeddingBagConfig per sparse feature."""
from __future__ import annotations

from torchrec.modules.embedding_configs import EmbeddingBagConfig, PoolingType

from torchrec_models.config import ModelConfig, feature_names, table_names


def embedding_bag_configs(model: ModelConfig) -> list[EmbeddingBagConfig]:
    """One sum-pooled table per feature, rows capped by ``model.max_rows_per_table``."""
    names = table_names(model.num_sparse_features)
    features = feature_names(model.num_sparse_features)
    return [
        EmbeddingBagConfig(
            name=name,
            embedding_dim=model.embedding_dim,
            num_embeddings=rows,
            feature_names=[feature],
            pooling=PoolingType.SUM,
        )
        for name, feature, rows in zip(names, features, model.table_rows())
    ]
