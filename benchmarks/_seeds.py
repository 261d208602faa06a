"""Shared steps of the over-seeds benchmark scripts (demo_seeds.py, mask_seeds.py)."""
import argparse
import tempfile
from pathlib import Path

from oodseg.atomic import write_json, write_text
from oodseg.errors import OodsegError
from oodseg.report.seeds import parse_seeds
from oodseg.data.synthetic import MANIFEST_NAME, complete, generate


def ensure_data(data: Path, size: tuple[int, int], frames: dict | None) -> None:
    """SynthStreet at ``data``: completed when it exists (earlier folders get the validation tracks), else generated
    with data seed 0 (the demo's)."""
    if (data / MANIFEST_NAME).is_file():
        complete(data)
    else:
        generate(data, seed=0, size=size, frames=frames)


def write_summary(out: Path, stem: str, text: str, result: dict) -> None:
    """``OUT/{stem}.md`` and ``OUT/{stem}.json``; print the markdown."""
    write_json(out / f"{stem}.json", result)
    write_text(out / f"{stem}.md", text)
    print("\n" + text + f"\nwrote {out / (stem + '.md')} and {stem}.json")


def seed_parser(description: str) -> argparse.ArgumentParser:
    """The options every over-seeds script takes: --data, --out, --seeds, --quick (add the script's own)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--data", type=Path, default=None, help="SynthStreet root (default OUT/data, generated when missing)")
    parser.add_argument("--out", type=Path, default=None, help="output folder (required; a temporary one with --quick)")
    parser.add_argument("--seeds", default=None, help="training seeds (default 0,1,2; 0,1 with --quick)")
    return parser


def out_and_seeds(args: argparse.Namespace, prefix: str) -> tuple[Path, list[int]]:
    """The output folder (a temporary one with --quick when none is given) and the parsed seeds."""
    if args.out is None and not args.quick:
        raise OodsegError("--out is required (or --quick)")
    out = args.out or Path(tempfile.mkdtemp(prefix=prefix))
    return out, parse_seeds(args.seeds or ("0,1" if args.quick else "0,1,2"))
