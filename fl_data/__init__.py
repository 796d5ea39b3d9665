"""Data preparation tools: split a dataset into per-node CSV files for federated experiments."""
