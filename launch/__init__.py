"""torchx components for training and benchmarking."""
