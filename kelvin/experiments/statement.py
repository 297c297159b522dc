"""The words of a comparison report, generated from its numbers (kelvin/experiments/results.py): the primary endpoint
and what a seed varies first, then each arm against the reference with its interval, then what the comparison could
have seen (its power). No number in these sentences is written by hand, so a regenerated report says what its
results.json says."""

from __future__ import annotations

from scipy import stats

from kelvin.controllers import is_baseline
from kelvin.experiments.recipe import parse_evaluation
from kelvin.experiments.results import CONFIDENCE, ComparisonResults

SPREAD = 0.05  # mean training temperatures further apart than this make a common-T endpoint favour some arms


def _signed(x: float) -> str:
    return f"{x:+.3f}"


def endpoint_sentence(results: ComparisonResults) -> str:
    """What the primary endpoint is, in words (the report's first sentence)."""
    setup, ev = results.setup, results.evaluation
    settings = parse_evaluation(ev)
    endpoint, k = settings.endpoint, settings.k
    size = f"{ev['size']}" if ev["size"] else "all"
    where = (
        f"{size} problems of each of {', '.join(ev['tasks'])} (unweighted mean)"
        if ev["tasks"]
        else f"{size} held-out test problems of {setup['task']}"
    )
    if endpoint.kind == "greedy":
        what = (
            "greedy accuracy (the greedy decode, which does not depend on the temperature scale an arm trained its "
            f"logits for) on {where}"
        )
    elif endpoint.kind == "tuned":
        candidates = ", ".join(f"{t:g}" for t in settings.tuning_temperatures)
        what = (
            f"avg@{k} at each run's own best temperature, chosen among {candidates} (and a learned temperature, "
            f"where an arm has one) on the validation split, then measured on {where}"
        )
    else:
        what = f"avg@{k} at the common temperature {endpoint.name} on {where}"
    return (
        f"Primary endpoint, declared in the recipe before the runs: {what}; after {setup['steps']} steps of "
        f"{setup['prompts_per_step']} prompts x {setup['num_generations']} samples."
    )


def seed_sentence(results: ComparisonResults) -> str:
    """What one seed varies."""
    setup = results.setup
    if setup.get("vary_data_order"):
        return (
            f"Seed s sets trainer.seed = s (sampling and the controllers' own draws) and task.seed = "
            f"{setup['task_seed']} + s (the order of the training prompts), the same in every arm (paired); the "
            f"held-out problems are the same for every run (task.eval_seed = {setup['eval_seed']})."
        )
    return (
        "Seed s sets trainer.seed = s only (sampling and the controllers' own draws); every run sees the same training "
        "prompts in the same order, so the seeds replicate sampling noise, not a rerun on other data."
    )


def reference_sentence(results: ComparisonResults, accuracy: dict[str, float]) -> str:
    best = results.best_fixed_arm
    assert best is not None
    selection = results.selection
    if results.reference == "selection" and selection is not None:
        candidates = ", ".join(f"{t:g}" for t in selection["temperatures"])
        chosen = selection.get("chosen_temperature")
        seeds = selection["seeds"]
        how = selection.get("criterion", "the primary endpoint on the validation split")
        return (
            f"The reference is {best} at T = {chosen:g} ({accuracy[best]:.3f}): the temperature chosen among "
            f"{candidates} by {how}, over selection seeds {seeds[0]}-{seeds[-1]}, disjoint from the comparison's; "
            f"{best} was then trained afresh on the comparison's seeds."
        )
    fixed = [a for a, s in results.arms.items() if s.seeds and is_baseline(s.controller)]
    chosen = (
        f", chosen among {len(fixed)} fixed arms on this same evaluation, which flatters it" if len(fixed) > 1 else ""
    )
    return f"The best fixed-temperature arm is {best} at {accuracy[best]:.3f}{chosen}."


def arm_sentence(arm: str, results: ComparisonResults) -> tuple[str, bool]:
    """One arm against the reference on the primary endpoint; the flag says whether it was undecided."""
    best = results.best_fixed_arm
    summary = results.arms[arm]
    assert summary.vs_best_fixed is not None
    d = summary.vs_best_fixed.interval
    direction = "above" if d.mean > 0 else "below" if d.mean < 0 else "level with"
    amount = f"{abs(d.mean):.3f} {direction}" if d.mean != 0 else "level with"
    if d.low is None or d.high is None:
        return (
            f"{arm} is {amount} {best} with one paired seed: there is no interval, so this does not say which is "
            "better.",
            True,
        )
    if d.excludes_zero:
        verdict = "better than" if d.mean > 0 else "worse than"
        return (
            f"{arm} is {amount} {best}, 95% CI [{_signed(d.low)}, {_signed(d.high)}] over {d.n} paired seeds: "
            f"{verdict} {best} at {d.n} seeds (the interval excludes 0).",
            False,
        )
    return (
        f"{arm} is {amount} {best}, 95% CI [{_signed(d.low)}, {_signed(d.high)}]: not distinguishable at {d.n} seeds.",
        True,
    )


def power_sentence(results: ComparisonResults) -> str | None:
    """What the comparison could have seen: the minimum detectable effect per arm, and the seeds +0.02 needs."""
    power = results.power
    if power is None or not power.seeds:
        return None
    arms = list(power.seeds)
    detectable = [(a, power.minimum_detectable_effect[a]) for a in arms]
    if all(mde is None for _, mde in detectable):
        return "The paired differences did not vary between seeds, so no power can be estimated from them."
    listed = ", ".join(f"±{mde:.3f} ({arm})" for arm, mde in detectable if mde is not None)
    needed = ", ".join(f"{power.seeds_needed[a]} ({a})" for a in arms if power.seeds_needed[a] is not None)
    n = min(power.seeds.values())
    return (
        f"Power: with {n} paired seeds, a true difference in the primary endpoint of at least {listed} would have been "
        f"detected with {power.power:.0%} probability (two-sided α = {power.alpha:g}, from the observed SD of the "
        f"paired differences); smaller differences could go unseen. Detecting ±{power.effect:g} would need {needed} "
        "seeds."
    )


def training_temperature_note(results: ComparisonResults) -> str | None:
    """With a common-T primary, say when the arms trained at different mean temperatures (it favours some)."""
    endpoint = parse_evaluation(results.evaluation).endpoint
    if endpoint.kind != "common":
        return None
    means = {
        arm: s.training.mean_temperature
        for arm, s in results.arms.items()
        if s.training is not None and s.training.mean_temperature is not None
    }
    if len(means) < 2 or max(means.values()) - min(means.values()) <= SPREAD:
        return None
    listed = ", ".join(f"{arm} {tau:.2f}" for arm, tau in means.items())
    return (
        f"The arms trained at different mean temperatures ({listed}) and are all evaluated at {endpoint.name}: a "
        "policy learns logits for the temperature it samples at, so this endpoint favours arms trained near it (an arm "
        "trained colder is sampled hotter than it trained). The greedy and tuned endpoints below do not have this bias."
    )


def width_note(results: ComparisonResults) -> str:
    """Why the intervals are as wide as they are: the t quantile at the number of paired seeds."""
    paired = [s.vs_best_fixed.interval.n for s in results.arms.values() if s.vs_best_fixed]
    n = min(paired) if paired else 0
    if n >= 2:
        t = float(stats.t.ppf(0.5 + CONFIDENCE / 2, df=n - 1))
        return (
            f"With {n} seeds a 95% interval spans ±{t:.2f} standard errors of the per-seed differences; more seeds "
            "(--seeds) narrow it, more steps (--steps) let the arms drift further apart."
        )
    return "More seeds (--seeds) give intervals; more steps (--steps) let the arms drift further apart."


def statement(results: ComparisonResults) -> str:
    """One honest paragraph, generated from the numbers: each arm against the reference arm, with its interval."""
    arms = {a: s for a, s in results.arms.items() if s.seeds}
    sentences = [endpoint_sentence(results), seed_sentence(results)]
    if not arms:
        return " ".join([*sentences, "No run has finished its evaluation yet, so there is no result to state."])
    accuracy = {a: s.final_accuracy.mean for a, s in arms.items() if s.final_accuracy is not None}
    if results.best_fixed_arm is None:
        ranked = sorted(accuracy, key=lambda a: -accuracy[a])
        listing = ", ".join(f"{a} {accuracy[a]:.3f}" for a in ranked)
        sentences.append(
            f"There is no fixed-temperature arm, so nothing is compared with a fixed baseline ({listing})."
        )
        return " ".join(sentences)
    sentences.append(reference_sentence(results, accuracy))
    undecided = False
    for arm, summary in arms.items():
        if arm == results.best_fixed_arm or summary.vs_best_fixed is None:
            continue
        sentence, unsure = arm_sentence(arm, results)
        sentences.append(sentence)
        undecided = undecided or unsure
    if note := training_temperature_note(results):
        sentences.append(note)
    if power := power_sentence(results):
        sentences.append(power)
    elif undecided:
        sentences.append(width_note(results))
    if results.missing_runs:
        sentences.append(f"{len(results.missing_runs)} run(s) have no evaluation yet and are left out.")
    return " ".join(sentences)
