"""Model families."""
from torchrec_models.models.dlrm import RankingModel, build_model

__all__ = ["RankingModel", "build_model"]
