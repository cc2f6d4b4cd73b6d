"""The driver: `GRPOTrainer`'s loop, the prompts it draws, its run folder and checkpoints.

The top layer beside the command line: it may import every layer below (distributed, workers,
loader, engine, core); nothing below imports it.
"""
