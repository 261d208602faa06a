"""The mask-classification detectors over several training seeds: mean ± std on both SynthStreet tracks.

For each seed s, the demo's mask family (:mod:`oodseg.workflows.demo_mask`) in ``OUT/seed-{s}/``: the small
Mask2Former trained with seed s (``mask-baseline``), its RbA fine-tuning, every mask detector scored on both
test tracks (``maskomaly`` ranked on the track's ``{track}_val``) and evaluated as the demo evaluates.
The per-seed folders are the demo's, the same as ``benchmarks/demo_seeds.py`` writes: run this script with
the ``--out`` (and ``--data``) of a ``demo_seeds.py`` run and each seed's table holds both families, the
per-pixel scores of the small DeepLabv3+-style model next to the ``m2f-*`` rows.

Writes ``OUT/mask_seeds.md`` and ``OUT/mask_seeds.json`` (schema ``oodseg.seeds``): mean ± sample std
(ddof=1) per method and column over the seeds.

    python benchmarks/mask_seeds.py --data seeds-out/data --seeds 0,1,2 --out seeds-out
    oodseg bench mask_seeds --quick      # 2 seeds of tiny models on tiny data, a smoke test
"""
from __future__ import annotations

from pathlib import Path

from oodseg.report.seeds import seed_tables, seeds_json, seeds_markdown
from oodseg.workflows.demo import TRACKS, DemoConfig, ranking_tables
from oodseg.workflows.demo_mask import run_mask_family
from _seeds import ensure_data, out_and_seeds, seed_parser, write_summary  # noqa: E402
from _cli import run_main  # noqa: E402  (benchmarks/ is on sys.path as a script and under oodseg bench)


def main(argv: list[str] | None = None) -> dict:
    parser = seed_parser(__doc__.splitlines()[0])
    parser.add_argument("--mask-steps", type=int, default=None, help="closed-set steps (default: the mask-baseline recipe's)")
    parser.add_argument("--rba-steps", type=int, default=None, help="RbA fine-tuning steps (default: the demo's)")
    parser.add_argument("--quick", action="store_true", help="tiny data and a few training steps (a smoke test)")
    args = parser.parse_args(argv)
    out, seeds = out_and_seeds(args, "mask-seeds-")
    shape = DemoConfig(out=out, quick=args.quick, family="mask")  # data size and counts
    data = args.data or out / "data"
    ensure_data(data, shape.size, shape.frames)
    per_seed = {}
    for seed in seeds:
        print(f"== seed {seed}", flush=True)
        config = DemoConfig(out=out / f"seed-{seed}", seed=seed, family="mask", quick=args.quick, report_frames=-1,
                            mask_steps=args.mask_steps, rba_steps=args.rba_steps)
        config.out.mkdir(parents=True, exist_ok=True)
        run_mask_family(config, data, TRACKS)
        per_seed[seed] = ranking_tables(config.out / "evaluate")
    tables = seed_tables(per_seed)
    text = seeds_markdown(tables)
    result = seeds_json(tables)
    result["data"] = str(Path(data).resolve())
    write_summary(out, "mask_seeds", text, result)
    return result


if __name__ == "__main__":
    run_main(main)
