"""`FastLanguageModel`: Unsloth's loader API on transformers, PEFT and bitsandbytes, the fast methods
it attaches (`fast_generate`, `load_lora`, `save_lora`), offloaded checkpointing and model files.

Imports the engine and core layers only.
"""
