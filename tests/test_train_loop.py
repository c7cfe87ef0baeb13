"""The training loop: accumulation equals the big batch, exact resume, NaN stop, schedules."""

import json

import pytest
import torch
from torch import nn

from alignlab.train import NonFiniteLossError, ResumeMismatchError, StepFns, TrainSettings, train
from alignlab.train.checkpoint import latest_checkpoint
from alignlab.train.schedule import lr_multiplier

CPU = torch.device("cpu")


def toy_data(n=24, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 6, generator=g)
    y = x @ torch.randn(6, 1, generator=g)
    # per-example "token counts" that differ, so token-weighted normalisation matters
    counts = torch.randint(1, 5, (n,), generator=g).float()
    return x, y, counts


class Toy(nn.Module):
    def __init__(self, dropout=0.0):
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Dropout(dropout), nn.Linear(8, 1))

    def forward(self, x):
        return self.net(x)


def toy_fns(x, y, counts, fail_at=None, nan_at=None):
    calls = {"n": 0}

    def make_batch(idx):
        i = torch.tensor(idx)
        return {"x": x[i], "y": y[i], "w": counts[i]}

    def loss(model, batch, normaliser):
        calls["n"] += 1
        if fail_at is not None and calls["n"] == fail_at:
            raise KeyboardInterrupt("simulated kill")
        err = ((model(batch["x"]) - batch["y"]) ** 2).squeeze(-1) * batch["w"]
        total = err.sum()
        if nan_at is not None and calls["n"] >= nan_at:
            total = total * float("nan")
        return total / normaliser, {"mse": err.mean().detach()}

    return StepFns(make_batch, lambda b: b["w"].sum(), loss)


def params(model):
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def run(tmp, settings, fns, model=None):
    model = model or Toy()
    x, *_ = toy_data()
    result = train(model, [1 + i % 5 for i in range(len(x))], fns, settings, tmp, device=CPU)
    return model, result


def test_accumulation_gives_the_same_update_as_the_large_batch(tmp_path):
    x, y, c = toy_data()
    base = dict(batch_size=8, lr=1e-2, max_steps=6, save_every=None, max_grad_norm=None)
    big, _ = run(tmp_path / "a", TrainSettings(**base), toy_fns(x, y, c))
    small, _ = run(tmp_path / "b", TrainSettings(**base, micro_batch_size=3), toy_fns(x, y, c))
    assert torch.allclose(params(big), params(small), atol=1e-6)
    assert not torch.allclose(params(big), params(Toy()))  # it trained


def test_resume_after_a_kill_ends_with_identical_weights(tmp_path):
    x, y, c = toy_data()
    s = TrainSettings(batch_size=4, lr=1e-2, epochs=3, save_every=2, seed=3)
    whole, result = run(tmp_path / "whole", s, toy_fns(x, y, c), Toy(dropout=0.3))
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "killed", s, toy_fns(x, y, c, fail_at=9), Toy(dropout=0.3))
    assert latest_checkpoint(tmp_path / "killed" / "checkpoints").name == "step-000008"
    resumed, result2 = run(tmp_path / "killed", s, toy_fns(x, y, c), Toy(dropout=0.3))
    assert torch.equal(params(whole), params(resumed))
    steps = [json.loads(line)["step"] for line in (tmp_path / "killed" / "log.jsonl").read_text().splitlines()]
    assert steps == list(range(1, result["steps"] + 1))  # no step logged twice or lost
    assert result2["train"]["loss"] == pytest.approx(result["train"]["loss"], abs=0)


def test_the_final_checkpoint_leaves_out_the_optimizer_and_a_rerun_trains_no_more(tmp_path):
    # AdamW's state is twice the weights, and nothing resumes training from the last checkpoint
    x, y, c = toy_data()
    s = TrainSettings(batch_size=4, max_steps=4, save_every=2)
    first, result = run(tmp_path, s, toy_fns(x, y, c))
    root = tmp_path / "checkpoints"
    assert latest_checkpoint(root).name == "step-000004"
    assert "optimizer" not in torch.load(latest_checkpoint(root) / "trainer_state.pt", weights_only=True)
    fns = toy_fns(x, y, c, fail_at=1)  # any training step would raise
    again, result2 = run(tmp_path, s, fns)
    assert torch.equal(params(first), params(again)) and result2["train"] == result["train"]


def test_resume_refuses_a_checkpoint_written_for_other_settings(tmp_path):
    x, y, c = toy_data()
    run(tmp_path, TrainSettings(batch_size=4, max_steps=2, save_every=1), toy_fns(x, y, c))
    with pytest.raises(ResumeMismatchError):
        run(tmp_path, TrainSettings(batch_size=4, max_steps=2, save_every=1, lr=1.0), toy_fns(x, y, c))


def test_a_leftover_temporary_checkpoint_is_ignored(tmp_path):
    x, y, c = toy_data()
    s = TrainSettings(batch_size=4, max_steps=3, save_every=1)
    run(tmp_path, s, toy_fns(x, y, c))
    (tmp_path / "checkpoints" / ".tmp-step-000004").mkdir()
    assert latest_checkpoint(tmp_path / "checkpoints").name == "step-000003"


def test_non_finite_loss_stops_without_a_step(tmp_path):
    x, y, c = toy_data()
    model = Toy()
    with pytest.raises(NonFiniteLossError, match="step 2"):
        run(tmp_path, TrainSettings(batch_size=4, max_steps=5), toy_fns(x, y, c, nan_at=2), model)
    assert torch.isfinite(params(model)).all()


def test_schedules():
    assert lr_multiplier(0, 10, 2, "linear") == 0.5
    assert lr_multiplier(1, 10, 2, "linear") == 1.0
    assert lr_multiplier(6, 10, 2, "linear") == pytest.approx(0.5)
    assert lr_multiplier(6, 10, 2, "cosine") == pytest.approx(0.5)
    assert lr_multiplier(2, 10, 2, "cosine") == pytest.approx(1.0)
    assert lr_multiplier(9, 10, 0, "constant") == 1.0


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_online_rollout_runs_at_the_training_precision(tmp_path, precision):
    """With precision bf16 the rollout (sampling, reference and reward forwards) runs under the
    same autocast as the update, as TRL's accelerate-wrapped generation does; fp32 stays fp32."""
    from alignlab.train.online import OnlineSettings, OnlineStage, run_online

    model = nn.Linear(3, 1)
    seen = []

    def collect(iteration):
        x = torch.randn(4, 3)
        seen.append(model(x).dtype)  # what a policy forward inside the rollout computes in
        return {"x": x, "y": x.sum(-1)}, {"reward": 0.0}

    def loss(b):
        return ((model(b["x"]).squeeze(-1).float() - b["y"]) ** 2).mean(), {}

    settings = OnlineSettings(iterations=2, prompts_per_iteration=4, minibatch_size=4, lr=1e-2, save_every=None,
                              device="cpu", precision=precision)
    run_online(model, OnlineStage(collect, loss), settings, tmp_path, device=CPU, expected_samples=4, name="toy")
    assert seen == [torch.bfloat16 if precision == "bf16" else torch.float32] * 2
