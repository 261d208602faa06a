"""The ``oodseg`` command: demo, synth, train, score, evaluate, meta, report, bench.

Each command is a thin wrapper: it parses options, calls the library function that does
the work (imported lazily so ``oodseg --help`` stays fast), prints a table or JSON, and
turns :class:`oodseg.errors.OodsegError` into a one-line ``error: ...`` and exit code 2.
"""
from __future__ import annotations

import json
import sys

import click

from oodseg.errors import OodsegError


class _Group(click.Group):
    """Click group that reports :class:`OodsegError` (and missing files) as one line, exit 2."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except (OodsegError, FileNotFoundError, PermissionError) as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(2)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="oodseg")
def main() -> None:
    """oodseg — pixel-wise out-of-distribution detection for semantic segmentation.

    \b
    Typical session on the embedded SynthStreet benchmark:
      oodseg synth --out data/synth
      oodseg train --recipe baseline --data data/synth --out ckpt/baseline
      oodseg score --checkpoint ckpt/baseline --images data/synth/anomaly --method entropy --out scores
      oodseg evaluate --dataset smiyc-anomaly --root data/synth/anomaly --scores scores/entropy/anomaly
    """


def echo_json(obj: object) -> None:
    """Print ``obj`` as JSON on stdout (for ``--json`` machine-readable output)."""
    click.echo(json.dumps(obj, indent=2))


# Commands are added below, one section per command.
