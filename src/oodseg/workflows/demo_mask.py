"""The mask-classification family of the demo (``oodseg demo --family mask``; SPEC §9).

Cached in the demo's output folder like every other step:

    OUT/train/mask2former/       closed-set small-mask2former (``oodseg train --recipe mask-baseline``)
    OUT/train/mask2former-rba/   its RbA outlier fine-tuning (``--recipe rba``, SynthStreet's outlier pool)
    OUT/scores-mask/closed/      rba, m2a, eam and the logits-only scores on log P, closed-set model
    OUT/scores-mask/maskomaly/   maskomaly, its queries ranked on the track's validation split ({track}_val)
    OUT/scores-mask/rba-tuned/   rba of the fine-tuned model
    OUT/evaluate/{track}/m2f-*.json   the evaluations, labelled ``m2f-{method}`` (``m2f-rba-tuned`` for the
                                      fine-tuned model), so the ranking tables and the report show them next
                                      to the per-pixel scores of the small DeepLabv3+-style model
"""
from __future__ import annotations

from pathlib import Path

from oodseg.layout import scores_dir

#: scores of the closed-set model (UNO needs a negative class, which this model does not have)
CLOSED_METHODS = ("rba", "m2a", "eam", "msp", "entropy", "max_logit", "energy")
#: label prefix of the mask family's methods in the tables
PREFIX = "m2f-"
#: RbA fine-tuning steps of a full demo (the closed-set steps are the mask-baseline recipe's default)
RBA_STEPS = 100


def mask_runs(config) -> dict[str, tuple[Path, str]]:
    """``{table label: (scores root, method key)}`` of the mask family's score runs under ``config.out``."""
    root = config.out / "scores-mask"
    runs = {f"{PREFIX}{m}": (root / "closed", m) for m in CLOSED_METHODS}
    runs[f"{PREFIX}maskomaly"] = (root / "maskomaly", "maskomaly")
    runs[f"{PREFIX}rba-tuned"] = (root / "rba-tuned", "rba")
    return runs


def run_mask_family(config, data: Path, tracks: tuple[str, ...]) -> list[dict]:
    """Train the small Mask2Former and its RbA fine-tuning, score and evaluate ``tracks``; return the evaluations."""
    from oodseg.workflows.demo import evaluate_track, score_cached, train_model

    closed = train_model(config, data, "mask2former", seed=config.seed, steps=config.mask_steps,
                         recipe="mask-baseline")
    tuned = train_model(config, data, "mask2former-rba", seed=config.seed, steps=config.rba_steps or RBA_STEPS,
                        recipe="rba", init=str(closed), outliers=str(data / "outliers"))
    root = config.out / "scores-mask"
    evaluations = []
    for track in tracks:
        score_cached(config, closed, data, track, list(CLOSED_METHODS), root / "closed")
        score_cached(config, closed, data, track, ["maskomaly"], root / "maskomaly", fit_data=data / f"{track}_val",
                     fit_frames=100)
        score_cached(config, tuned, data, track, ["rba"], root / "rba-tuned")
        runs = {label: scores_dir(folder, key, track) for label, (folder, key) in mask_runs(config).items()}
        evaluations += evaluate_track(config, data, track, runs)
    return evaluations
