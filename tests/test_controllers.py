"""Schedule and heuristic controllers against their formulas; per-token controllers keep the recorded-tau invariant."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from kelvin.config import load_config
from kelvin.controllers import build_controller
from kelvin.controllers.base import Scores, TemperatureController, TokenContext
from kelvin.controllers.ead import EADController, EADControllerConfig
from kelvin.controllers.edt import EDTController, EDTControllerConfig
from kelvin.controllers.entropy_target import EntropyTargetController, EntropyTargetControllerConfig
from kelvin.controllers.schedule import ScheduleController, ScheduleControllerConfig
from kelvin.controllers.tampo import TAMPOController
from kelvin.models.loading import build_char_tokenizer, build_tiny_model
from kelvin.rl.logprobs import token_logprobs_and_entropy
from kelvin.rl.rollouts import Rollouts
from kelvin.rl.sampling import SamplingSettings, sample

# --------------------------------------------------------------------------------------------------------------------
# Schedules
# --------------------------------------------------------------------------------------------------------------------


def temperatures(controller: TemperatureController, steps: list[int]) -> list[float]:
    out = []
    for step in steps:
        controller.begin_step(step)
        out.append(controller.batch_temperature())
    return out


def test_linear_schedule_hits_start_end_and_the_line() -> None:
    controller = ScheduleController(ScheduleControllerConfig(kind="linear", start=0.9, end=1.5), total_steps=11)
    # 11 steps: 0.06 per step, written out
    np.testing.assert_allclose(temperatures(controller, [0, 1, 5, 10, 15]), [0.9, 0.96, 1.2, 1.5, 1.5], atol=1e-12)
    assert controller.metrics() == {"temperature/chosen": pytest.approx(1.5)}


def test_cosine_schedule_matches_formula() -> None:
    controller = ScheduleController(ScheduleControllerConfig(kind="cosine", start=0.9, end=1.5), total_steps=5)
    # step 1 of 5: p = 1/4, T = 1.5 - 0.6 * (1 + cos(pi/4)) / 2 = 1.5 - 0.6 * 0.8535533905932737
    np.testing.assert_allclose(
        temperatures(controller, [0, 1, 2, 4]), [0.9, 1.5 - 0.6 * 0.8535533905932737, 1.2, 1.5], atol=1e-12
    )


def test_staged_schedule_even_split_and_explicit_boundaries() -> None:
    even = ScheduleController(ScheduleControllerConfig(kind="staged", stages=[1.4, 1.45, 1.5]), total_steps=9)
    assert temperatures(even, list(range(9))) == [1.4] * 3 + [1.45] * 3 + [1.5] * 3
    assert even.metrics()["temperature/stage"] == 2.0
    given = ScheduleController(
        ScheduleControllerConfig(kind="staged", stages=[0.7, 1.0, 1.1], stage_steps=[2, 7]), total_steps=9
    )
    assert temperatures(given, list(range(9))) == [0.7] * 2 + [1.0] * 5 + [1.1] * 2


def test_schedule_state_round_trip_and_bad_configs() -> None:
    controller = ScheduleController(ScheduleControllerConfig(kind="linear"), total_steps=11)
    controller.begin_step(7)
    resumed = ScheduleController(ScheduleControllerConfig(kind="linear"), total_steps=11)
    resumed.load_state_dict(controller.state_dict())
    assert resumed.batch_temperature() == controller.batch_temperature() == pytest.approx(0.9 + 0.06 * 7)
    with pytest.raises(ValueError, match="stage_steps"):
        ScheduleController(ScheduleControllerConfig(kind="staged", stages=[1.0, 1.1], stage_steps=[1, 2]), 9)
    with pytest.raises(ValueError, match="strictly increasing"):
        ScheduleController(ScheduleControllerConfig(kind="staged", stages=[1.0, 1.1, 1.2], stage_steps=[5, 3]), 9)
    with pytest.raises(ValueError, match="start"):
        ScheduleController(ScheduleControllerConfig(kind="linear", start=0.0), 9)


# --------------------------------------------------------------------------------------------------------------------
# Entropy target
# --------------------------------------------------------------------------------------------------------------------


def rollouts_with_mask(mask: torch.Tensor, temperature: float = 1.0) -> Rollouts:
    rows, length = mask.shape
    return Rollouts(
        prompt_ids=torch.ones(rows, 1, dtype=torch.long),
        prompt_mask=torch.ones(rows, 1, dtype=torch.long),
        completion_ids=torch.zeros(rows, length, dtype=torch.long),
        completion_mask=mask,
        temperature=torch.full((rows, length), temperature),
        behaviour_logprobs=torch.zeros(rows, length),
        truncated=torch.zeros(rows, dtype=torch.bool),
    )


def test_entropy_target_follows_its_formula() -> None:
    cfg = EntropyTargetControllerConfig(
        target=0.0, target_ratio=0.8, gain=0.5, min_temperature=0.5, max_temperature=2.0
    )
    controller = EntropyTargetController(cfg, initial_temperature=1.0)
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    # masked positions hold 99: they must not count. Counted: 1.0, 2.0, 3.0, 0.5, 1.5 -> H = 8 / 5 = 1.6
    entropy = torch.tensor([[1.0, 2.0, 3.0, 99.0], [0.5, 1.5, 99.0, 99.0]])
    scores = Scores(old_logprobs=torch.zeros(2, 4), entropy_at_one=entropy)
    controller.begin_step(0)
    metrics = controller.update(rollouts_with_mask(mask), torch.zeros(2), scores)
    # H* = 0.8 * 1.6 = 1.28; T1 = 1.0 * exp(0.5 * (1.28 - 1.6)) = exp(-0.16)
    assert metrics["temperature/entropy_at_one"] == pytest.approx(1.6)
    assert metrics["temperature/entropy_target"] == pytest.approx(1.28)
    assert metrics["temperature/chosen"] == 1.0
    assert metrics["temperature/next"] == pytest.approx(math.exp(-0.16))
    assert controller.batch_temperature() == 1.0  # the new T applies from the next step
    controller.begin_step(1)
    assert controller.batch_temperature() == pytest.approx(math.exp(-0.16))
    # a low-entropy batch (H = 0.1) heats up: T2 = T1 * exp(0.5 * (1.28 - 0.1)), the target stays fixed
    scores = Scores(old_logprobs=torch.zeros(2, 4), entropy_at_one=torch.full((2, 4), 0.1))
    controller.update(rollouts_with_mask(mask), torch.zeros(2), scores)
    controller.begin_step(2)
    assert controller.batch_temperature() == pytest.approx(math.exp(-0.16) * math.exp(0.5 * 1.18))
    # a very low entropy saturates at T_max
    scores = Scores(old_logprobs=torch.zeros(2, 4), entropy_at_one=torch.full((2, 4), -20.0))
    controller.update(rollouts_with_mask(mask), torch.zeros(2), scores)
    controller.begin_step(3)
    assert controller.batch_temperature() == 2.0

    resumed = EntropyTargetController(cfg, initial_temperature=1.0)
    resumed.load_state_dict(controller.state_dict())
    assert resumed.state_dict() == controller.state_dict()


def test_entropy_target_with_a_given_target_and_bad_inputs() -> None:
    cfg = EntropyTargetControllerConfig(target=2.0, gain=0.1)
    controller = EntropyTargetController(cfg, initial_temperature=1.2)
    controller.begin_step(0)
    scores = Scores(old_logprobs=torch.zeros(1, 2), entropy_at_one=torch.tensor([[3.0, 2.0]]))
    controller.update(rollouts_with_mask(torch.ones(1, 2, dtype=torch.long)), torch.zeros(1), scores)
    assert controller.next_temperature == pytest.approx(1.2 * math.exp(0.1 * (2.0 - 2.5)))
    with pytest.raises(ValueError, match=r"sampling\.temperature"):
        EntropyTargetController(cfg, initial_temperature=5.0)
    with pytest.raises(ValueError, match="no completion tokens"):
        controller.update(rollouts_with_mask(torch.zeros(1, 2, dtype=torch.long)), torch.zeros(1), scores)


# --------------------------------------------------------------------------------------------------------------------
# EAD and EDT formulas
# --------------------------------------------------------------------------------------------------------------------


def context(position: int, step: int, logits: torch.Tensor) -> TokenContext:
    rows = logits.shape[0]
    return TokenContext(
        step=step,
        position=position,
        previous_temperature=torch.ones(rows),
        logits=logits,
        hidden=None,
        active=torch.ones(rows, dtype=torch.bool),
    )


def ead_tau(position: int, step: int) -> float:
    return float(
        EADController(EADControllerConfig(tau_max=1.2, tau_min=0.1, d0=40.0, d_growth=5.0, d_max=100.0, warm_tokens=3))
        .token_temperature(context(position, step, torch.zeros(2, 5)))
        .temperature[0]
    )


def test_ead_matches_its_formula_at_chosen_steps_and_positions() -> None:
    assert [ead_tau(p, 0) for p in (0, 1, 2)] == [1.0, 1.0, 1.0]  # warm tokens
    # step 0: d = 40. t = 3: 2.2 - e^{0.075} = 2.2 - 1.0778841508846315; t = 30: 2.2 - e^{0.75} = 0.0829999 -> 0.1
    assert ead_tau(3, 0) == pytest.approx(2.2 - 1.0778841508846315, abs=1e-6)
    assert ead_tau(30, 0) == pytest.approx(0.1, abs=1e-7)
    # step 10: d = 90. t = 20: 2.2 - e^{2/9} = 2.2 - 1.2488488690016821
    assert ead_tau(20, 10) == pytest.approx(2.2 - 1.2488488690016821, abs=1e-6)
    # step 1000: d = min(40 + 5000, 100) = 100. t = 50: 2.2 - e^{0.5} = 2.2 - 1.6487212707001282
    assert ead_tau(50, 1000) == pytest.approx(2.2 - 1.6487212707001282, abs=1e-6)
    assert ead_tau(10**6, 1000) == pytest.approx(0.1)  # no overflow far out


def test_ead_reproduces_the_authors_code_with_the_documented_mapping() -> None:
    # yangalan123/EAD-RLVR, decay_mode "negexp": 1 + T_exp - exp(len / (20 * min(f + 5 s, 40000))), floor T_stab,
    # identity below the warm-up length. Their script: f = 25, T_exp = 1.2, T_stab = 0.1, warm-up 10.
    def reference(length: int, step: int) -> float:
        if length < 10:
            return 1.0
        return max(1 + 1.2 - math.exp(length / (20 * min(25 + 5 * step, 40000))), 0.1)

    cfg = EADControllerConfig(tau_max=1.2, tau_min=0.1, d0=500.0, d_growth=100.0, d_max=800000.0, warm_tokens=10)
    controller = EADController(cfg)
    for step in (0, 3, 100, 9000):
        for position in (0, 9, 10, 200, 700, 3000):
            got = float(controller.token_temperature(context(position, step, torch.zeros(1, 4))).temperature[0])
            assert got == pytest.approx(reference(position, step), abs=1e-6)


def test_edt_matches_its_formula() -> None:
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 20, generator=gen) * torch.tensor([0.1, 1.0, 3.0, 6.0, 12.0, 40.0]).unsqueeze(-1)
    cfg = EDTControllerConfig(t0=1.3, n=0.8, theta=0.9, min_temperature=0.05)
    got = EDTController(cfg).token_temperature(context(0, 0, logits)).temperature.numpy()
    z = logits.double().numpy()
    p = np.exp(z - z.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    entropy = -(p * np.log(p)).sum(-1)
    expected = np.maximum(1.3 * 0.8 ** (0.9 / entropy), 0.05)
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    assert got.min() == pytest.approx(0.05) and got.max() > 1.0  # both regimes are exercised
    # a one-hot distribution (H = 0) gives the floor, not NaN
    peaked = torch.full((1, 5), -1e4)
    peaked[0, 2] = 0.0
    assert float(EDTController(cfg).token_temperature(context(0, 0, peaked)).temperature[0]) == pytest.approx(0.05)


# --------------------------------------------------------------------------------------------------------------------
# The invariant: per-token tau recorded by the sampler is the only tau the recomputed log-probs need
# --------------------------------------------------------------------------------------------------------------------


def sample_and_recompute(controller: TemperatureController, step: int = 0) -> tuple[Rollouts, torch.Tensor]:
    tokenizer = build_char_tokenizer()
    model = build_tiny_model("1m", vocab_size=len(tokenizer), seed=0)
    with torch.no_grad():
        model.model.norm.weight.mul_(4.0)  # a peakier random model: per-token entropies differ, so EDT's tau varies
    gen = torch.Generator().manual_seed(0)
    rows, prompt_len = 8, 7
    prompt_ids = torch.randint(3, len(tokenizer), (rows, prompt_len), generator=gen)
    prompt_mask = torch.ones(rows, prompt_len, dtype=torch.long)
    for row in range(0, rows, 2):  # left padding on half the rows
        prompt_mask[row, : row // 2 + 1] = 0
        prompt_ids[row, : row // 2 + 1] = tokenizer.pad_token_id
    # extra end ids so that some rows stop early and the completion mask is exercised
    settings = SamplingSettings(max_new_tokens=20, eos_ids=[2, 10, 11], pad_id=tokenizer.pad_token_id)
    controller.begin_step(step)
    rollouts = sample(model, prompt_ids, prompt_mask, controller, settings, step=step, generator=gen)

    with torch.no_grad():
        mask = rollouts.attention_mask
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        logits = model(input_ids=rollouts.input_ids, attention_mask=mask, position_ids=positions).logits.float()
    length = rollouts.completion_ids.shape[1]
    completion_logits = logits[:, prompt_len - 1 : prompt_len - 1 + length]
    logprobs, _ = token_logprobs_and_entropy(
        completion_logits, rollouts.completion_ids, rollouts.temperature, rollouts.top_p, rollouts.top_k
    )
    return rollouts, logprobs


def assert_ratio_one_and_tau_varies(rollouts: Rollouts, logprobs: torch.Tensor) -> None:
    counted = rollouts.completion_mask.bool()
    assert not bool(counted.all()), "some rows should end early so the mask matters"
    log_ratio = (logprobs - rollouts.behaviour_logprobs)[counted]
    assert float(log_ratio.abs().max()) < 1e-5  # ratio = exp(log_ratio) = 1 within 1e-5
    spreads = [float(tau[m].max() - tau[m].min()) for tau, m in zip(rollouts.temperature, counted) if m.sum() > 2]
    assert spreads and min(spreads) > 1e-3  # tau changes along every sequence long enough to tell


def test_ead_keeps_the_recorded_temperature_invariant() -> None:
    controller = EADController(
        EADControllerConfig(tau_max=1.2, tau_min=0.3, d0=10.0, d_growth=5.0, d_max=1000.0, warm_tokens=2)
    )
    rollouts, logprobs = sample_and_recompute(controller, step=1)
    assert_ratio_one_and_tau_varies(rollouts, logprobs)
    # and the recorded tau is EAD's: position 0 and 1 at 1.0, position 5 at 2.2 - e^{5/15}
    assert torch.all(rollouts.temperature[:, :2] == 1.0)
    assert float(rollouts.temperature[0, 5]) == pytest.approx(2.2 - math.exp(5 / 15), abs=1e-6)


def test_edt_keeps_the_recorded_temperature_invariant() -> None:
    controller = EDTController(EDTControllerConfig(t0=1.5, n=0.8, theta=2.0, min_temperature=0.3))
    rollouts, logprobs = sample_and_recompute(controller)
    assert_ratio_one_and_tau_varies(rollouts, logprobs)


# --------------------------------------------------------------------------------------------------------------------
# Wiring: every controller of this module is reachable from a recipe
# --------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "cls"),
    [
        ("schedule", ScheduleController),
        ("entropy_target", EntropyTargetController),
        ("ead", EADController),
        ("edt", EDTController),
        ("tampo", TAMPOController),
    ],
)
def test_build_controller_maps_names_to_classes(name: str, cls: type) -> None:
    controller = build_controller(load_config(overrides=[f"controller.name={name}", "trainer.steps=10"]))
    assert isinstance(controller, cls) and controller.name == name
