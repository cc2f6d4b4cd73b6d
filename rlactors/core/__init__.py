"""What every layer shares and that imports nothing of rlactors above it: `GRPOConfig`, the
records that cross actor boundaries, the LoRA adapter format and the GRPO math (pure torch).
"""
