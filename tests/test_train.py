"""Training: determinism, learning, interrupt-and-resume, faults, configuration (qdiff_lib.train)."""

from __future__ import annotations

import math

import pytest
import torch

from qdiff_lib.train import (
    CHECKPOINT_NAME,
    NonFiniteError,
    TrainConfig,
    load_checkpoint,
    train,
)
from qdiff_lib.unet import UNet

pytestmark = pytest.mark.usefixtures("one_thread")


def _images(n: int = 10) -> torch.Tensor:
    """Deterministic 'digits': a bright vertical bar at a few positions on a dark background."""
    x = -torch.ones(n, 1, 28, 28)
    for i in range(n):
        c = 8 + (i % 5) * 3
        x[i, 0, 4:24, c : c + 3] = 1.0
    return x


def _config(**kwargs) -> TrainConfig:
    base = dict(steps=12, batch_size=8, timesteps=50, checkpoint_every=5, seed=3, device="cpu")
    return TrainConfig(**{**base, **kwargs})


def _model(**kwargs) -> UNet:
    return UNet(**{"bottleneck": "se", "n_qubits": 4, "seed": 0, **kwargs})


class _Tiny(torch.nn.Module):
    """A small time-conditioned denoiser, for the tests of the trainer's bookkeeping (the trainer is model-agnostic)."""

    def __init__(self, seed: int = 0):
        super().__init__()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.inp = torch.nn.Conv2d(1, 4, 3, padding=1)
            self.time = torch.nn.Linear(1, 4)
            self.out = torch.nn.Conv2d(4, 1, 3, padding=1)

    def forward(self, x, t):
        h = torch.relu(self.inp(x) + self.time(t.float()[:, None] / 50)[:, :, None, None])
        return self.out(h)


class _Recorder(_Tiny):
    """The tiny denoiser, recording the inputs the trainer gives it."""

    def __init__(self):
        super().__init__()
        self.seen: list[tuple[torch.Tensor, torch.Tensor]] = []

    def forward(self, x, t):
        self.seen.append((x.detach().clone(), t.clone()))
        return super().forward(x, t)


class _Interrupt(Exception):
    pass


def _stop_at(step_to_stop: int):
    def callback(step, loss, model):
        if step == step_to_stop:
            raise _Interrupt

    return callback


def _assert_same_state(a: torch.nn.Module, b: torch.nn.Module) -> None:
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert ka == kb and torch.equal(va, vb), ka


def test_same_seed_bit_identical_loss_history():
    a = train(_Tiny(), _images(), _config(steps=6), progress=False)
    b = train(_Tiny(), _images(), _config(steps=6), progress=False)
    c = train(_Tiny(), _images(), _config(steps=6, seed=4), progress=False)
    assert a.loss_history == b.loss_history and len(a.loss_history) == 6
    assert a.loss_history != c.loss_history
    _assert_same_state(a.ema_model, b.ema_model)


def test_short_training_lowers_the_loss():
    result = train(_model(), _images(), _config(steps=30, lr=2e-3), progress=False)
    first, last = result.loss_history[:8], result.loss_history[-8:]
    assert sum(last) / 8 < 0.6 * sum(first) / 8


def test_interrupt_and_resume_equals_an_uninterrupted_run(tmp_path):
    reference = train(_model(), _images(), _config(), checkpoint_dir=tmp_path / "ref", progress=False)
    with pytest.raises(_Interrupt):
        train(_model(), _images(), _config(), checkpoint_dir=tmp_path / "run", progress=False, callback=_stop_at(7))
    assert load_checkpoint(tmp_path / "run")["step"] == 5  # the last checkpoint before the interruption
    # a fresh model object (its own initial weights do not matter: the checkpoint replaces them)
    resumed = train(_model(seed=99), _images(), _config(), checkpoint_dir=tmp_path / "run", progress=False)
    assert resumed.resumed_from == 5
    assert resumed.loss_history == reference.loss_history
    _assert_same_state(resumed.model, reference.model)
    _assert_same_state(resumed.ema_model, reference.ema_model)
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == [CHECKPOINT_NAME]  # no temporary files left


def test_resume_restores_the_shot_sampler_of_a_quantum_layer(tmp_path):
    def model():
        return _model(bottleneck="quantum", n_qubits=2, n_layers=1, quantum_kwargs={"shots": 50})

    cfg = _config(steps=5, checkpoint_every=2)
    reference = train(model(), _images(), cfg, checkpoint_dir=tmp_path / "ref", progress=False)
    with pytest.raises(_Interrupt):
        train(model(), _images(), cfg, checkpoint_dir=tmp_path / "run", progress=False, callback=_stop_at(3))
    resumed = train(model(), _images(), cfg, checkpoint_dir=tmp_path / "run", progress=False)
    assert resumed.resumed_from == 2 and resumed.loss_history == reference.loss_history
    _assert_same_state(resumed.model, reference.model)


def test_a_finished_run_resumes_to_itself(tmp_path):
    first = train(_Tiny(), _images(), _config(steps=4), checkpoint_dir=tmp_path, progress=False)
    again = train(_Tiny(), _images(), _config(steps=4), checkpoint_dir=tmp_path, progress=False)
    assert again.resumed_from == 4 and again.loss_history == first.loss_history
    _assert_same_state(again.ema_model, first.ema_model)


def test_nan_loss_stops_with_a_clear_error_and_keeps_the_last_good_checkpoint(tmp_path):
    def corrupt_after_step_3(step, loss, model):
        if step == 3:
            with torch.no_grad():
                model.out.weight[0, 0, 0, 0] = float("nan")

    with pytest.raises(NonFiniteError, match=r"loss is nan at step 4.*last good checkpoint: step 2") as info:
        train(_Tiny(), _images(), _config(checkpoint_every=2), checkpoint_dir=tmp_path, progress=False,
              callback=corrupt_after_step_3)
    assert info.value.step == 4 and info.value.last_checkpoint_step == 2
    state = load_checkpoint(tmp_path)
    assert state["step"] == 2
    assert all(bool(torch.isfinite(v).all()) for v in state["model"].values())
    reference = train(_Tiny(), _images(), _config(steps=2), progress=False)
    assert state["loss_history"] == reference.loss_history
    assert torch.equal(state["model"]["out.weight"], reference.model.out.weight)


def test_divergence_with_a_huge_learning_rate_is_caught(tmp_path):
    with pytest.raises(NonFiniteError, match=r"at step \d+") as info:
        train(_Tiny(), _images(), _config(lr=1e30, steps=20, checkpoint_every=1), checkpoint_dir=tmp_path,
              progress=False)
    state = load_checkpoint(tmp_path)
    assert state is None or state["step"] < info.value.step
    if state is not None:
        assert all(bool(torch.isfinite(v).all()) for v in state["model"].values())


def test_resume_refuses_other_settings_or_other_images(tmp_path):
    train(_Tiny(), _images(), _config(steps=2), checkpoint_dir=tmp_path, progress=False)
    with pytest.raises(ValueError, match="written with other settings"):
        train(_Tiny(), _images(), _config(steps=2, lr=1e-3), checkpoint_dir=tmp_path, progress=False)
    with pytest.raises(ValueError, match="other training images"):
        train(_Tiny(), _images(9), _config(steps=2), checkpoint_dir=tmp_path, progress=False)


def test_quantum_arm_trains_its_circuit():
    model = _model(bottleneck="quantum", n_layers=2)
    before = model.bottleneck_gate.middle.weights.detach().clone()
    result = train(model, _images(), _config(steps=3), progress=False)
    assert not torch.equal(result.model.bottleneck_gate.middle.weights, before)
    assert all(math.isfinite(v) for v in result.loss_history)


def test_frozen_squeeze_stays_frozen():
    model = _model(bottleneck="se_frozen")
    before = model.bottleneck_gate.squeeze.weight.detach().clone()
    result = train(model, _images(), _config(steps=3), progress=False)
    assert torch.equal(result.model.bottleneck_gate.squeeze.weight, before)
    assert torch.equal(result.ema_model.bottleneck_gate.squeeze.weight, before)


def test_ema_is_the_moving_average_of_the_weights():
    model = _Tiny()
    w0 = model.out.bias.detach().clone()
    cfg = _config(steps=1, ema_decay=0.9, ema_warmup=False)
    result = train(model, _images(), cfg, progress=False)
    torch.testing.assert_close(result.ema_model.out.bias, 0.9 * w0 + 0.1 * result.model.out.bias)
    # with warm-up (the default) the first step uses decay (1 + 1) / (10 + 1)
    model = _Tiny()
    result = train(model, _images(), _config(steps=1, ema_decay=0.9), progress=False)
    torch.testing.assert_close(result.ema_model.out.bias, 2 / 11 * w0 + 9 / 11 * result.model.out.bias)


def _graph_nodes(tensor: torch.Tensor) -> int:
    """Number of autograd nodes reachable from ``tensor.grad_fn`` (0 for a tensor outside any graph)."""
    seen, stack = set(), [tensor.grad_fn]
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        stack.extend(next_fn for next_fn, _ in node.next_functions)
    return len(seen)


def test_ema_records_no_autograd_history():
    """The EMA is updated outside autograd: no EMA parameter requires grad or carries a graph after training, so
    its memory does not grow with steps (before the fix, each step added nodes: AddBackward0 -> MulBackward0 ...)."""
    sizes = {}
    for steps in (3, 9):
        result = train(_model(), _images(), _config(steps=steps, checkpoint_every=0), progress=False)
        for name, p in result.ema_model.named_parameters():
            assert not p.requires_grad, f"EMA parameter {name} requires grad"
            assert p.grad_fn is None, f"EMA parameter {name} carries autograd history ({p.grad_fn})"
        sizes[steps] = sum(_graph_nodes(p) for p in result.ema_model.parameters())
    assert sizes == {3: 0, 9: 0}, f"autograd nodes held by the EMA after 3 and 9 steps: {sizes}"


def test_budget_in_steps_or_epochs():
    assert TrainConfig().total_steps(100) == 2000
    assert TrainConfig(steps=7).total_steps(100) == 7
    assert TrainConfig(epochs=30).total_steps(10) == math.ceil(30 * 10 / 64)
    assert TrainConfig(epochs=30).total_steps(6742) == math.ceil(30 * 6742 / 64)
    result = train(_Tiny(), _images(), _config(steps=None, epochs=2.0), progress=False)
    assert result.steps == len(result.loss_history) == math.ceil(2.0 * 10 / 8)
    assert result.summary()["epochs"] == pytest.approx(result.steps * 8 / 10)


def test_defaults_are_the_papers():
    c = TrainConfig()
    assert (c.lr, c.batch_size, c.ema_decay, c.schedule, c.timesteps) == (3e-4, 64, 0.999, "cosine", 1000)
    assert (c.noise, c.timestep_distribution, c.device) == ("gaussian", "uniform", "auto")


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"schedule": "quadratic"}, r"unknown beta schedule 'quadratic'; allowed: \["),
        ({"noise": "pink"}, r"unknown noise source 'pink'; allowed: \['gaussian'"),
        ({"timestep_distribution": "zipf"}, r"unknown timestep distribution 'zipf'; allowed: \['uniform'"),
        ({"steps": 10, "epochs": 3.0}, "give steps or epochs, not both"),
        ({"steps": 0}, "steps must be an integer >= 1"),
        ({"batch_size": 0}, "batch_size must be an integer >= 1"),
        ({"ema_decay": 1.0}, r"ema_decay must lie in \[0, 1\)"),
        ({"lr": -1.0}, "lr must be a positive number"),
        ({"device": "tpu"}, r"unknown device 'tpu'; allowed: \['auto', 'cpu', 'cuda', 'cuda:N'\]"),
        ({"timesteps": 1}, "timesteps must be an integer >= 2"),
    ],
)
def test_bad_configurations(kwargs, match):
    with pytest.raises(ValueError, match=match):
        TrainConfig(**kwargs)


def test_bad_images():
    with pytest.raises(ValueError, match=r"expected \(N, C, H, W\)"):
        train(_Tiny(), torch.zeros(1, 28, 28), _config(), progress=False)
    bad = _images()
    bad[0, 0, 0, 0] = float("inf")
    with pytest.raises(ValueError, match="NaN or infinite"):
        train(_Tiny(), bad, _config(), progress=False)


@pytest.mark.parametrize("distribution", ["uniform", "logsnr_gaussian"])
def test_draws_follow_the_documented_order(distribution):
    """Per step: image indices (with replacement), timesteps, then the noise, from one generator."""
    from qdiff_lib.diffusion import Diffusion
    from qdiff_lib.schedules import timestep_weights

    images, cfg = _images(), _config(steps=3, timestep_distribution=distribution, schedule="linear")
    model = _Recorder()
    train(model, images, cfg, progress=False)
    g = torch.Generator().manual_seed(cfg.seed)
    d = Diffusion.from_schedule("linear", cfg.timesteps)
    weights = timestep_weights(distribution, cfg.timesteps, schedule="linear")
    for x_seen, t_seen in model.seen:
        idx = torch.randint(10, (8,), generator=g)
        if distribution == "uniform":
            t = torch.randint(cfg.timesteps, (8,), generator=g)
        else:
            t = torch.multinomial(weights, 8, replacement=True, generator=g)
        noise = torch.randn((8, 1, 28, 28), generator=g)
        assert torch.equal(t_seen, t)
        assert torch.equal(x_seen, d.add_noise(images[idx], noise, t))


def test_logsnr_timesteps_concentrate_where_the_weights_are():
    from qdiff_lib.schedules import timestep_weights

    model = _Recorder()
    train(model, _images(), _config(steps=25, batch_size=64, timestep_distribution="logsnr_gaussian"), progress=False)
    t = torch.cat([s[1] for s in model.seen])
    expected = float((timestep_weights("logsnr_gaussian", 50, schedule="cosine") * torch.arange(50)).sum())
    assert abs(float(t.double().mean()) - expected) < 1.5  # 1600 draws; sd of the mean is about 0.3


@pytest.mark.parametrize("noise, kwargs", [("quantum", {"n_qubits": 4}), ("hybrid", {"n_qubits": 4})])
def test_quantum_and_hybrid_noise_sources(noise, kwargs):
    a = train(_Recorder(), _images(), _config(steps=3, noise=noise, noise_kwargs=kwargs), progress=False)
    b = train(_Recorder(), _images(), _config(steps=3, noise=noise, noise_kwargs=kwargs), progress=False)
    g = train(_Recorder(), _images(), _config(steps=3), progress=False)
    assert a.loss_history == b.loss_history != g.loss_history
    assert all(math.isfinite(v) for v in a.loss_history)


def test_ema_warmup_schedule_and_effect():
    """With warm-up the EMA decay is min(decay, (1+s)/(10+s)); without it, the paper's constant decay."""
    from qdiff_lib.train import ema_decay_at

    assert ema_decay_at(1, 0.999) == pytest.approx(2 / 11)
    assert ema_decay_at(100, 0.999) == pytest.approx(101 / 110)
    assert ema_decay_at(10_000, 0.999) == 0.999
    assert ema_decay_at(1, 0.999, warmup=False) == 0.999
    from qdiff_lib.train import ema_initial_share

    assert ema_initial_share(150, 0.999, warmup=False) == pytest.approx(0.999**150)
    assert ema_initial_share(2, 0.999) == pytest.approx(2 / 11 * 3 / 12)
    assert ema_initial_share(150, 0.999) < 1e-10
    with pytest.raises(ValueError, match="ema_warmup must be True or False"):
        TrainConfig(ema_warmup="yes")


def test_every_ci_run_reaches_a_memory_release():
    """The ci profile exists to exercise every code path of a run, the periodic memory release included."""
    from qdiff_lib import train as train_module
    from qdiff_lib.grids import PROFILES

    assert train_module.RELEASE_EVERY <= PROFILES["ci"].steps
