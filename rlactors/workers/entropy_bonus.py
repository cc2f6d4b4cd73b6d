"""TRL's entropy bonus (`entropy_coef`) and Skywork-OR1's adaptive control of it (`use_adaptive_entropy`):
the loss less the coefficient times the kept tokens' mean entropy, the coefficient moved after each
optimizer step by how that step's entropy stands against `entropy_target`."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rlactors.core.config import GRPOConfig


class EntropyBonus:
    def __init__(self, config: GRPOConfig):
        self.config = config
        self.enabled = config.entropy_coef != 0.0 or config.use_adaptive_entropy
        self.coef = config.entropy_coef
        self.last_entropy = math.inf  # the last optimizer step's, over all learners

    def applied(self) -> float:
        """The coefficient this optimizer step's micro-batches use: adaptive, only once the last step's
        entropy was at or below the target (never in the first)."""
        if self.config.use_adaptive_entropy and self.last_entropy > self.config.entropy_target:
            return 0.0
        return self.coef

    def loss_term(self, entropy: Any, kept: Any, num_micro: int) -> Any:
        """What the micro-batch's loss loses: the coefficient times its kept tokens' mean entropy, one
        micro-batch's share of the optimizer step (`num_micro` over all learners), whatever the loss_type."""
        return self.applied() * (entropy * kept).sum() / kept.sum().clamp(min=1.0) / num_micro

    def step_done(self, entropy: float) -> None:
        """After an optimizer step, its entropy over the kept tokens: the adaptive coefficient moves by
        entropy_coef_delta, up while at or below the target, else down, within its bounds."""
        cfg = self.config
        if not cfg.use_adaptive_entropy:
            return
        if entropy <= cfg.entropy_target:
            self.coef = min(self.coef + cfg.entropy_coef_delta, cfg.entropy_coef_max)
        else:
            self.coef = max(self.coef - cfg.entropy_coef_delta, cfg.entropy_coef_min)
        self.last_entropy = entropy

    def state(self) -> dict[str, float]:
        return {"entropy_coef": self.coef, "last_entropy": self.last_entropy}

    def load(self, state: dict[str, Any]) -> None:
        self.coef = state.get("entropy_coef", self.coef)
        self.last_entropy = state.get("last_entropy", self.last_entropy)
