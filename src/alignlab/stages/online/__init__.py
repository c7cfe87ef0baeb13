"""Online training stages: the policy samples, a reward source scores, the engine updates (PPO, GRPO, RLOO, REINFORCE++, online DPO, SPIN, rejection sampling)."""
