"""TorchRec-sharded recommender training."""
