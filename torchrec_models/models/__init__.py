"""Model families."""
from torchrec_models.models.dlrm import RankingModel, build_model, compile_dense_parts, set_output_bias

__all__ = ["RankingModel", "build_model", "compile_dense_parts", "set_output_bias"]
