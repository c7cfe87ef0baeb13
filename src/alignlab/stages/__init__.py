"""Stages: each a config class (unknown keys are errors) and a `run(config, out_dir) -> metrics`."""

from __future__ import annotations

from dataclasses import dataclass
from importlib import import_module
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:  # the registry stays import-light: `alignlab --help` needs only the names and summaries
    from alignlab.stages.common import StageConfig


@dataclass(frozen=True)
class StageType:
    module: str
    config: str
    summary: str
    function: str = "run"
    data_parallel: bool = False
    """trains data-parallel under torchrun; the others run on process 0 alone while the rest wait"""

    def load(self) -> tuple[type[StageConfig], Callable]:
        mod = import_module(f"alignlab.stages.{self.module}")
        return getattr(mod, self.config), getattr(mod, self.function)


STAGES: dict[str, StageType] = {
    "task_data": StageType("data.task_data", "TaskDataConfig", "write a built-in task's datasets (SFT, prompts)"),
    "redteam_data": StageType("data.redteam_data", "RedTeamDataConfig",
                              "real red-team prompts (AdvBench, HarmBench, Do-Not-Answer) from installed packages, split"),
    "pretrain": StageType("offline.pretrain", "PretrainConfig", "train a tokenizer and a small LM from scratch", data_parallel=True),
    "sft": StageType("offline.sft", "SFTConfig", "supervised fine-tuning on demonstrations", data_parallel=True),
    "sample_pairs": StageType("data.sample_pairs", "SamplePairsConfig", "sample k responses per prompt, label pairs by gold reward"),
    "reward_model": StageType("offline.reward_model", "RewardModelConfig", "Bradley–Terry reward model on pairs or rankings", data_parallel=True),
    "dpo": StageType("offline.dpo", "DPOConfig", "offline preference optimisation: DPO, cDPO, robust, hinge, IPO, SimPO, ORPO, RPO", data_parallel=True),
    "preference": StageType("offline.dpo", "DPOConfig", "the dpo stage under its family name", data_parallel=True),
    "kto": StageType("offline.kto", "KTOConfig", "KTO on unpaired desirable/undesirable labels", data_parallel=True),
    "ppo": StageType("online.ppo", "PPOConfig", "PPO with a value function, GAE and a KL penalty (fixed or adaptive)", data_parallel=True),
    "grpo": StageType("online.grpo", "GRPOConfig", "GRPO: group-normalised advantages, clipping, k3 KL", "run_grpo", data_parallel=True),
    "rloo": StageType("online.rloo", "RLOOConfig", "RLOO: k samples, leave-one-out baseline", "run_rloo", data_parallel=True),
    "reinforce_pp": StageType("online.reinforce_pp", "ReinforcePPConfig", "REINFORCE++ (group baseline, batch-normalised advantages, KL in the reward)", "run_reinforce_pp", data_parallel=True),
    "online_dpo": StageType("online.preference", "OnlineDPOConfig", "online DPO: pairs sampled from the policy, ranked by a reward source", "run_online_dpo", data_parallel=True),
    "spin": StageType("online.spin", "SPINConfig", "SPIN self-play: demonstrations preferred over the policy's own samples", "run_spin", data_parallel=True),
    "safety_eval": StageType("evaluation.safety", "SafetyEvalConfig",
                             "harmful compliance and over-refusal, by an independent rule-based refusal detector"),
    "classifier_data": StageType("data.classifier_data", "ClassifierDataConfig",
                                 "labelled prompts and responses for constitutional classifiers, written by an LLM from a classifier constitution"),
    "classifier": StageType("offline.classifier", "ClassifierConfig",
                            "constitutional classifier: input (sequence) or streaming output (per-token) classifier of a guard"),
    "classifier_eval": StageType("evaluation.classifier_eval", "ClassifierEvalConfig",
                                 "a guard's block rate against false positives over the threshold, operating point, latency"),
    "best_of_n": StageType("evaluation.best_of_n", "BestOfNConfig", "best of N samples by a proxy reward: gold/proxy per N and the analytic KL"),
    "rejection_sampling": StageType("online.rejection_sampling", "RejectionSamplingConfig", "rounds of: sample N, keep the best per prompt, SFT on it"),
    "sl_cai": StageType("feedback.sl_cai", "SLCAIConfig", "Constitutional AI, supervised: critique and revise the policy's answers to red-team prompts"),
    "ai_labels": StageType("feedback.ai_labels", "AILabelsConfig", "RLAIF: soft preference labels from a feedback model's (A)/(B) log-probs under constitution principles"),
    "winrate": StageType("evaluation.winrate", "WinRateConfig", "win rate of model A against model B, judged by a reward model, an LLM or people"),
    "hybrid_labels": StageType("feedback.hybrid_labels", "HybridLabelsConfig", "route AI soft labels by confidence to AI / people / both; merge and measure agreement"),
    "prm": StageType("offline.prm", "PRMConfig", "process reward model: a token classifier trained on each step's label (last step only: an ORM)", data_parallel=True),
    "step_labels": StageType("data.step_labels", "StepLabelsConfig", "sample solutions and label every step and the final answer with a task's checker (PRM/ORM data)"),
    "search": StageType("evaluation.search", "SearchConfig", "majority vote, ORM and PRM best-of-N, PRM beam search: accuracy against N"),
    "debate": StageType("evaluation.debate", "DebateConfig",
                        "debate vs consultancy vs the judge alone on arithmetic: a sparse judge checks only revealed steps"),
    "sandwich": StageType("evaluation.sandwich", "SandwichConfig",
                          "sandwiching: non-expert alone, model alone, non-expert assisted by the model, expert"),
    "probe": StageType("evaluation.probe", "ProbeConfig",
                       "sycophancy (answer flips when challenged, agreement with a wrong belief) and refusal calibration"),
    "evaluate": StageType("evaluation.evaluate", "EvaluateConfig", "gold/proxy reward, KL, length, distinct-n of models' samples"),
    "frontier": StageType("evaluation.frontier", "FrontierConfig", "reward–KL frontier and overoptimisation plots"),
    "report": StageType("evaluation.report", "ReportConfig", "markdown + plot comparing evaluated models"),
}


def stage_type(name: str) -> StageType:
    if name not in STAGES:
        raise KeyError(f"unknown stage type {name!r}; known: {', '.join(STAGES)}")
    return STAGES[name]
