"""Table specs from the model config: one EmbeddingBagConfig per sparse feature."""
from __future__ import annotations

from torchrec.modules.embedding_configs import DataType, EmbeddingBagConfig, PoolingType

from torchrec_models.config import ModelConfig, feature_names, table_names

DATA_TYPES = {"fp32": DataType.FP32, "fp16": DataType.FP16}


def embedding_bag_configs(model: ModelConfig) -> list[EmbeddingBagConfig]:
    """One sum-pooled table per feature, rows capped by ``model.max_rows_per_table``, in ``model.embedding_dtype``."""
    names = table_names(model.num_sparse_features)
    features = feature_names(model.num_sparse_features)
    return [
        EmbeddingBagConfig(
            name=name,
            embedding_dim=model.embedding_dim,
            num_embeddings=rows,
            feature_names=[feature],
            pooling=PoolingType.SUM,
            data_type=DATA_TYPES[model.embedding_dtype],
        )
        for name, feature, rows in zip(names, features, model.table_rows())
    ]
