"""Using a trained model: consolidated state, export (with item vectors for retrieval), and
sharded evaluate / predict of a checkpoint."""
