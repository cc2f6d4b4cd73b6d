"""Multi-turn rollouts: tool-call formats (`chat_format`), running tools (`tools`), and episodes
that advance independently on one engine (`episodes`). Imports nothing of vLLM: the engine side
is `rlactors.engine.vllm_engine.TurnStream`."""
