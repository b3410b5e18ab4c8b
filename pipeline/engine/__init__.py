"""The training engine: one loop for every family, its contexts (Ray Train, local), checkpoints,
losses and regularizers."""
