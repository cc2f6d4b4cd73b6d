"""The Ray side: worker groups that make the plain workers actors, placement groups and GPU
shares, vLLM's memory share, and reward functions run as Ray tasks.

Imports the workers, loader, engine and core layers; only the trainer and the command line
import it.
"""
