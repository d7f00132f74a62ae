"""The training loop and its safety machinery: state, optimiser, sharding,
accumulation, checkpoints and their integrity, recovery, guards and locks."""
