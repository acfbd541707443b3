"""Tables and where they live: table specs and their initialization, the torchrec planner and
hand-built plans, offline planning of clusters with GPU presets and prices, the sharded model."""
