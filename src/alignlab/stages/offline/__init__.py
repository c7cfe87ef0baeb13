"""Offline training stages: fixed datasets in, a model out (pretrain, SFT, reward model, DPO family, KTO, PRM)."""
