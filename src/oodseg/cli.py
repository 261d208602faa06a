"""The ``oodseg`` command: demo, synth, train, score, evaluate, meta, report, bench, import.

Each command is a thin wrapper: it parses options, calls the library function that does
the work (imported lazily so ``oodseg --help`` stays fast), prints a table or JSON, and
turns :class:`oodseg.errors.OodsegError` into a one-line ``error: ...`` and exit code 2.
"""
from __future__ import annotations

import json
import sys
import warnings

import click

from oodseg.errors import OodsegError, OodsegWarning
from oodseg.keyvalue import parse_pairs, parse_scoped


def _show_warning(message, category, filename, lineno, file=None, line=None, _default=warnings.showwarning):
    """Print an :class:`OodsegWarning` as one ``warning: ...`` line on stderr; other warnings as Python does."""
    if issubclass(category, OodsegWarning):
        click.echo(f"warning: {message}", err=True)
    else:
        _default(message, category, filename, lineno, file, line)


class _Group(click.Group):
    """Click group that reports :class:`OodsegError` (and missing files) as one line, exit 2,
    :class:`OodsegWarning` as one ``warning: ...`` line on stderr, and Ctrl-C as one line, exit 130."""

    def invoke(self, ctx: click.Context):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("always", OodsegWarning)
                warnings.showwarning = _show_warning
                result = super().invoke(ctx)
            _flush_stdout()  # printed results on a full disk fail here, as one line
            return result
        except OodsegError as exc:
            command = self.get_command(ctx, ctx.invoked_subcommand) if ctx.invoked_subcommand else None
            flags = {p.name: max(p.opts, key=len) for p in (command.params if command else ())
                     if isinstance(p, click.Option)}
            click.echo(f"error: {cli_wording(str(exc), flags)}", err=True)
            sys.exit(2)
        except OSError as exc:  # a read-only or full output location, a missing file: complete outputs are kept
            click.echo(f"error: {os_error_line(exc)}", err=True)
            sys.exit(2)
        except KeyboardInterrupt:  # every output is written atomically: what finished stays, a rerun continues
            click.echo("interrupted: finished outputs are kept; run the command again to continue "
                       "(train: with --resume)", err=True)
            sys.exit(130)


STDOUT = "standard output"


def _flush_stdout() -> None:
    try:
        sys.stdout.flush()
    except OSError as exc:
        raise OSError(exc.errno, exc.strerror or str(exc), STDOUT) from exc


def os_error_line(exc: OSError) -> str:
    """``"<file>: <reason>"`` of an ``OSError`` (``standard output`` when printing failed, which then
    points standard output at /dev/null so that the exit does not fail a second time)."""
    import errno
    import os
    import traceback

    where, frames = exc.filename, [frame for frame, _ in traceback.walk_tb(exc.__traceback__)]
    printing = bool(frames) and any(f"{os.sep}{package}{os.sep}" in frames[-1].f_code.co_filename
                                    for package in ("click", "rich"))  # failed inside click.echo / rich print
    if where == STDOUT or (where is None and printing):
        where = STDOUT
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except (OSError, ValueError):  # not a real file (e.g. captured by a test runner)
            pass
    hint = {errno.ENOSPC: " (disk full)", errno.EDQUOT: " (quota exceeded)"}.get(exc.errno, "")
    reason = f"{exc.strerror or exc}{hint}"
    return f"{where}: {reason}" if where else reason


def cli_wording(message: str, flags: dict[str, str]) -> str:
    """A library error worded with the command's flags: the leading argument name(s) (``probs /x: …``,
    ``lr/steps: …``) and ``name=True`` mentions become their flags (``--probs /x: …``, ``--resume``) when
    ``flags`` (``{argument name: flag}``) has every name; any other message unchanged."""
    import re

    lead = re.match(r"(\w+(?:/\w+)*)(?=[ :])", message)
    if lead and all(name in flags for name in lead.group(1).split("/")):
        message = "/".join(flags[name] for name in lead.group(1).split("/")) + message[lead.end():]
    return re.sub(r"\b(\w+)=True\b", lambda m: flags.get(m.group(1), m.group(0)), message)


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

    Every command takes --json: print its result as JSON on stdout instead of the text.
    evaluate and meta also write it to a file with --save FILE.
    """


class RegistryChoice(click.Choice):
    """A choice among the names of a library registry (``module:NAME``: a sequence, a mapping or a function
    returning names), read when first needed — parsing or the command's own ``--help`` — so that
    ``oodseg --help`` imports no registry."""

    def __init__(self, registry: str, extra: tuple[str, ...] = ()):
        self._registry, self._extra, self._names = registry, extra, None
        super().__init__(())

    @property
    def choices(self) -> tuple[str, ...]:
        if self._names is None:
            import importlib

            module, _, name = self._registry.partition(":")
            registry = getattr(importlib.import_module(module), name)
            self._names = self._extra + tuple(registry() if callable(registry) else registry)
        return self._names

    @choices.setter
    def choices(self, value) -> None:  # click.Choice.__init__ assigns (); the registry is the source
        pass


WORKERS_HELP = ("Processes that {work} (default: half the cores, at most 8, and 0 below 4 cores; 0 = inline, one step after the other; "
                "more than the frames: as many as the frames; negative: an error).")


def echo_json(obj: object) -> None:
    """Print ``obj`` as JSON on stdout (for ``--json`` machine-readable output)."""
    click.echo(json.dumps(obj, indent=2))


def json_option(what: str):
    """The one ``--json`` of every command: print ``what`` as JSON on stdout instead of the text."""
    return click.option("--json", "as_json", is_flag=True, help=f"Print {what} as JSON on stdout instead of the text.")


def json_and_save_options(what: str):
    """``--json`` (as everywhere) and ``--save FILE`` (write ``what`` to FILE) for commands whose result is a file.

    The older spelling ``--json FILE`` still works: it means ``--save FILE`` and warns; ``--json -`` means ``--json``.
    """
    def decorate(command):
        command = click.option("--save", type=click.Path(dir_okay=False), default=None,
                               help=f"Write {what} to FILE (JSON, atomically); the text (or --json) is printed too.")(command)
        return click.option("--json", "json_out", is_flag=False, flag_value="-", default=None, metavar="",
                            help=f"Print {what} as JSON on stdout instead of the text (--json FILE: old spelling of "
                                 f"--save FILE).")(command)
    return decorate


def json_target(json_out: str | None, save: str | None, overwrite: bool) -> tuple[bool, str | None]:
    """``(print JSON?, file to write or None)`` from ``--json``/``--save``; refuses an existing file without
    --overwrite and a folder it cannot write into."""
    import os
    from pathlib import Path

    as_json = json_out is not None
    if json_out not in (None, "-"):
        if save is not None:
            raise OodsegError(f"--json {json_out}: give the file with --save only (--json alone prints the JSON)")
        warnings.warn(f"--json {json_out}: writing a file with --json is deprecated, use --save {json_out} "
                      "(--json alone prints the JSON)", OodsegWarning)
        as_json, save = False, json_out
    if save is not None and Path(save).exists() and not overwrite:
        raise OodsegError(f"{save}: already exists; pass --overwrite to replace it")
    if save is not None:  # fail before the work, not after it
        folder = Path(save).expanduser().absolute().parent
        while not folder.exists():
            folder = folder.parent
        if not (folder.is_dir() and os.access(folder, os.W_OK | os.X_OK)):
            raise OodsegError(f"--save {save}: cannot write into {folder} (read-only or not a folder)")
    return as_json, save


MODEL_SOURCE_HELP = ("oodseg checkpoint directory, python:MODULE:FACTORY, hf:DIR or torchvision:NAME, optionally "
                     "with ?KEY=VALUE&... options (docs/models.md)")


def model_source_options(command):
    """The options describing a model source besides its string (:func:`oodseg.models.sources.parse_model_source`)."""
    options = [
        click.option("--weights", type=click.Path(dir_okay=False), default=None,
                     help="State dict for a python:/torchvision: model (.safetensors, or .pth/.pt read with "
                          "weights_only=True); loaded strictly."),
        click.option("--model-arg", "model_args", multiple=True, metavar="KEY=VALUE",
                     help="Keyword of the python:/torchvision: factory, repeatable (e.g. num_classes=19)."),
        click.option("--normalize", default=None, metavar="imagenet|none|M1,M2,M3/S1,S2,S3",
                     help="Input normalisation the model expects (mean/std on the [0, 1] scale); default: none, "
                          "ImageNet for torchvision:, the preprocessor config for hf:."),
        click.option("--channel-order", type=click.Choice(["rgb", "bgr"]), default=None,
                     help="Channel order the model expects (default rgb; hf: from its preprocessor config)."),
        click.option("--output-key", default=None,
                     help="Entry of the model's output holding the logits (a dict key such as out or logits, or a "
                          "tuple index); default: logits, else out, else the only entry."),
        click.option("--head", default=None,
                     help="Module name (in your model) of the final 1x1 classifier conv, when the automatic "
                          "search cannot tell (e.g. decode_head.classifier)."),
        click.option("--align-corners/--no-align-corners", "align_corners", default=None,
                     help="How the model upsamples its logits (bilinear); scores are upsampled the same way "
                          "(default: the model's own, False; hf: DPT True)."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def model_source(spec: str, weights=None, model_args=(), normalize=None, channel_order=None, output_key=None,
                 head=None, align_corners=None):
    """The :class:`~oodseg.models.sources.ModelSource` of ``spec`` with the :func:`model_source_options` given."""
    from oodseg.models.sources import parse_model_source

    return parse_model_source(spec, weights=weights, model_args=parse_pairs(model_args, "--model-arg"),
                              normalize=normalize, channel_order=channel_order, output_key=output_key, head=head,
                              align_corners=align_corners)


# Commands are added below, one section per command.


# --- evaluate ---
def _parse_dataset_options(pairs: tuple[str, ...]) -> dict[str, str]:
    """``("split=testNoKnown", "mapping=0:0,1:1")`` -> dict of text values (:mod:`oodseg.keyvalue`)."""
    return parse_pairs(pairs, "--option", value=str.strip)


def _print_evaluation_table(result: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{result['method']} on {result['dataset']} ({result['dataset_kind']}, {result['track']} track, "
                        f"{result['n_frames']} frames)")
    for column in ("AP", "AUROC", "FPR95", "best F1", "θ", "sIoU", "PPV", "mean F1"):
        table.add_column(column, justify="right")

    def fmt(value, percent=True):
        return "–" if value is None else (f"{100 * value:.2f}" if percent else f"{value:.4g}")

    table.add_row(fmt(result["AP"]), fmt(result["AUROC"]), fmt(result["FPR95"]), fmt(result["best_F1"]),
                  fmt(result["component_threshold"], percent=False), fmt(result["sIoU"]), fmt(result["PPV"]),
                  fmt(result["mean_F1"]))
    Console().print(table)
    click.echo(f"(values in %; θ = pixel threshold of the component metrics; {result.get('protocol', 'exact')} protocol)")


def _print_semantic_table(result: dict) -> None:
    """mIoU, mIoU at each t, open-mIoU and ECE/AuSE of a result with ``segmentation``/``calibration`` blocks."""
    from rich.console import Console
    from rich.table import Table

    seg, cal = result["segmentation"], result["calibration"]
    table = Table(title=f"{result['method']} on {result['dataset']}: segmentation and calibration "
                        f"({cal['confidence']} confidence)")
    cells = {"mIoU": seg["mIoU"]}
    cells.update({f"mIoU@{row['t']:.4g}": row["mIoU"] for row in seg["mIoU_at"]})
    cells.update({"open-mIoU": seg["open_mIoU"], "open t": seg["open_threshold"], "ECE": cal["ECE"],
                  "AuSE": cal["AuSE"]})
    for column in cells:
        table.add_column(column, justify="right")
    percent = lambda key: key not in ("open t", "AuSE")  # noqa: E731
    table.add_row(*("–" if v is None else (f"{100 * v:.2f}" if percent(k) else f"{v:.4g}") for k, v in cells.items()))
    Console().print(table)
    click.echo("(values in % except the open-mIoU threshold and AuSE; – = undefined, e.g. no outlier pixels)")


@main.command("evaluate")
@click.option("--dataset", "kind", type=RegistryChoice("oodseg.data:available_kinds"), default=None,
              help="Dataset layout (e.g. smiyc-anomaly, lostandfound); default: detected from --root.")
@click.option("--root", required=True, type=click.Path(file_okay=False), help="Dataset root folder (read as-is).")
@click.option("--scores", "scores_dir", required=True, type=click.Path(file_okay=False),
              help="Folder of score files {fid}.hdf5|.h5|.npy|.npz, e.g. OUT/METHOD/DATASET.")
@click.option("--track", type=click.Choice(["anomaly", "obstacle"]), default=None,
              help="Component size filters: anomaly 500/100 px, obstacle 50/10 px (default: obstacle for smiyc-obstacle).")
@click.option("--mode", type=RegistryChoice("oodseg.metrics.tally:MODES"), default="exact", show_default=True,
              help="Pixel metrics: exact (sort-based) or streaming (bounded memory).")
@click.option("--protocol", type=RegistryChoice("oodseg.workflows.evaluate:PROTOCOLS"), default=None,
              help="smiyc: the official SegmentMeIfYouCan computation (768 percentile bins per frame, θ from that "
                   "curve); exact: every distinct score value. Default: smiyc on smiyc-anomaly/-obstacle, else exact.")
@click.option("--threshold", type=float, default=None, help="Pixel threshold θ of the component metrics (default: best-F1 threshold).")
@click.option("--threshold-from", "threshold_from", type=click.Path(dir_okay=False), default=None,
              help="oodseg.evaluate JSON of the same method on a validation set (e.g. SynthStreet anomaly_val): "
                   "its best-F1 threshold is θ (default: θ is the best-F1 threshold of this dataset, as SMIYC does).")
@click.option("--resize", is_flag=True, help="Bilinearly resize scores to the label size instead of refusing a size mismatch.")
@click.option("--roi", type=click.Path(dir_okay=False), default=None, help="Image whose non-zero pixels are the region evaluated.")
@click.option("--aggregate", type=RegistryChoice("oodseg.metrics.pixel:AGGREGATES"), default="pooled", show_default=True,
              help="Pool pixels over the dataset, or average AP/AUROC/FPR95 per image (StreetHazards protocol).")
@click.option("--option", "-o", "options", multiple=True, metavar="KEY=VALUE",
              help="Dataset option, repeatable: split=testNoKnown, mapping=0:0,1:1,255:255, laf_root=DIR, labels=available, ...")
@click.option("--method", default=None, help="Method name stored in the result (default: parent folder of --scores).")
@click.option("--segmentation", is_flag=True,
              help="Also compute mIoU, mIoU at --ood-threshold, open-mIoU, ECE and AuSE from semantic labels "
                   "(implied by --probs/--ood-threshold and by datasets with semantic labels only, e.g. Cityscapes).")
@click.option("--probs", default=None,
              help="Model giving the softmax for --segmentation (" + MODEL_SOURCE_HELP + "), or a folder of "
                   "{fid}.npz probabilities (default: the model in the scores' manifest).")
@click.option("--ood-threshold", "ood_thresholds", type=float, multiple=True,
              help="Score threshold t of 'mIoU at t' (pixels with score >= t predicted OoD), repeatable.")
@click.option("--confidence", type=RegistryChoice("oodseg.metrics.calibration:CONFIDENCE_MAPS", ("auto",)), default="auto",
              show_default=True, help="Score -> confidence for the ECE: 1-u/max u (normalised; auto when u >= 0), "
                                      "1-u (complement, e.g. msp), min-max scaled (minmax; auto when u < 0).")
@click.option("--device", default="cpu", show_default=True, help="Where the checkpoint runs for --segmentation.")
@click.option("--workers", type=int, default=None,
              help=WORKERS_HELP.format(work="read the score files and labels and compute each chunk's metrics"))
@json_and_save_options("the oodseg.evaluate result object")
@click.option("--overwrite", is_flag=True, help="Replace an existing --save file.")
def evaluate(kind, root, scores_dir, track, mode, protocol, threshold, threshold_from, resize, roi, aggregate, options,
             method, segmentation, probs, ood_thresholds, confidence, device, workers, json_out, save, overwrite):
    """Evaluate anomaly score files against a dataset's labels (SMIYC pixel + component metrics).

    Prints AP, AUROC, FPR95, best F1, sIoU, PPV and mean F1. On SMIYC layouts they follow the
    official SegmentMeIfYouCan code by default (--protocol smiyc: 768 percentile bins per frame,
    numpy 1.23 semantics); --protocol exact sweeps every score value. With --segmentation (or on a
    dataset with semantic labels only, e.g. Cityscapes val or SynthStreet shifted) it re-runs
    the model for its softmax and adds mIoU, mIoU at t, open-mIoU and the ECE/AuSE
    of the score as uncertainty. SMIYC tracks read semantic labels from
    labels_masks/{fid}_labels_trainIds.png (SynthStreet), StreetHazards from its annotations.
    Runs distributed under torchrun (frames sharded by rank, rank 0 writes). Prints one
    'warning:' line when score files hold fewer than 50 distinct values on frames with both
    classes (maps stored too coarsely, e.g. ODIN at T=1000 in float16). Score files are read by
    --workers processes (the metrics are the same for every count); evaluating score files imports
    no torch (only --segmentation/--probs, or --resize of smaller maps, load it).

    \b
    Examples:
      oodseg evaluate --dataset smiyc-anomaly --root data/synth/anomaly --scores scores/entropy/anomaly
      oodseg evaluate --root data/synth/anomaly --scores scores/entropy/anomaly --protocol exact
      oodseg evaluate --root /data/dataset_AnomalyTrack --scores scores/msp/dataset_AnomalyTrack --workers 8
      oodseg evaluate --dataset lostandfound --root /data/LostAndFound -o split=testNoKnown \\
          --scores scores/pgn/LostAndFound-testNoKnown --track obstacle --save results/laf.json
      torchrun --nproc_per_node=2 "$(which oodseg)" evaluate --root data/synth/obstacle \\
          --scores scores/energy/obstacle --mode streaming
      oodseg evaluate --root data/synth/anomaly --scores scores/msp/anomaly --segmentation \\
          --probs ckpt/baseline --ood-threshold 0.5 --save results/anomaly-msp.json
      oodseg evaluate --root data/synth/shifted -o city=fog --scores scores/msp/shifted-val \\
          --confidence complement --json
      oodseg evaluate --root data/synth/anomaly_val --scores scores/entropy/anomaly_val --save val/entropy.json
      oodseg evaluate --root data/synth/anomaly --scores scores/entropy/anomaly --threshold-from val/entropy.json
    """
    from pathlib import Path

    from oodseg import distributed
    from oodseg.atomic import write_json
    from oodseg.data import detect_kind, open_dataset
    from oodseg.workflows.evaluate import evaluate_dataset

    as_json, save = json_target(json_out, save, overwrite)
    provenance = None
    if threshold_from is not None:
        from oodseg.workflows.selection import component_threshold_from

        if threshold is not None:
            raise OodsegError("--threshold-from: give either --threshold or --threshold-from, not both")
        threshold, provenance = component_threshold_from(
            threshold_from, method or Path(scores_dir).expanduser().resolve().parent.name)
    distributed.init()
    try:
        kind = kind or detect_kind(root)
        dataset_options = _parse_dataset_options(options)
        dataset = open_dataset(kind, root, **dataset_options)
        result = None
        if dataset.label_type != "semantic":
            track = track or ("obstacle" if kind == "smiyc-obstacle" else "anomaly")
            result = evaluate_dataset(dataset, scores_dir, track=track, mode=mode, threshold=threshold, resize=resize,
                                      roi=roi, aggregate=aggregate, method=method, protocol=protocol,
                                      workers=workers)
            if provenance is not None:
                result["component_threshold_from"] = provenance
        if segmentation or probs is not None or ood_thresholds or dataset.label_type == "semantic":
            from oodseg.workflows.evaluate_semantic import evaluate_semantic, open_semantic_dataset, with_semantic

            semantic = evaluate_semantic(open_semantic_dataset(kind, root, **dataset_options), scores_dir, probs,
                                         method=method, mode=mode, ood_thresholds=ood_thresholds,
                                         confidence=confidence, resize=resize, roi=roi, device=device)
            result = semantic if result is None else with_semantic(result, semantic)
        is_main = distributed.is_main()
    finally:
        distributed.cleanup()
    if not is_main:
        return
    if save is not None:
        write_json(save, result)
    if as_json:
        echo_json(result)
        return
    if "track" in result:
        _print_evaluation_table(result)
    if "segmentation" in result:
        _print_semantic_table(result)
    if save is not None:
        click.echo(f"wrote {save}")


# --- score ---
@main.command("score")
@click.option("--checkpoint", "--model", "checkpoint", required=True, help="The model: " + MODEL_SOURCE_HELP + ".")
@model_source_options
@click.option("--images", required=True, type=click.Path(file_okay=False), help="Dataset root or any folder of images.")
@click.option("--dataset-kind", type=RegistryChoice("oodseg.data:available_kinds"), default=None,
              help="Dataset layout (smiyc-anomaly, lostandfound, images, ...); default: detected.")
@click.option("--dataset-name", default=None,
              help="Folder name of the dataset below each method (default: from the root); one plain name "
                   "(no /, \\, leading dot).")
@click.option("--option", "-o", "options", multiple=True, metavar="KEY=VALUE",
              help="Dataset layout option, repeatable, e.g. split=testNoKnown.")
@click.option("--method", "methods", multiple=True, help="Score name, repeatable: msp, entropy, energy, max_logit, n_energy_cw, pgn, sml, mahalanobis, "
                   "mc_dropout, odin, ensemble, ... (oodseg.scores.available()); NAME[KEY=VALUE,...] gives one "
                   "instance its own parameters, e.g. 'pgn[label=uniform,p=0.3]'.")
@click.option("--preset", default=None, metavar="NAME",
              help="A paper's test-time protocol (methods, resolution, smoothing; see below); printed as it expands. "
                   "Further --method/--param are added to it.")
@click.option("--param", "params", multiple=True, metavar="METHOD.KEY=VALUE",
              help="Score parameter, repeatable, e.g. odin.epsilon=0.002 or pgn.label=uniform.")
@click.option("--fit-data", type=click.Path(file_okay=False), default=None,
              help="Cityscapes-layout root; its train split fits sml / mahalanobis. For maskomaly: an "
                   "OoD-labelled validation set (e.g. SynthStreet's anomaly_val) whose anomalies rank the queries.")
@click.option("--fit-frames", type=int, default=20, show_default=True, help="Frames of --fit-data used for fitting.")
@click.option("--ensemble", "ensemble", multiple=True,
              help="Further model(s) forming the ensemble with --checkpoint (method 'ensemble'), each an " +
                   MODEL_SOURCE_HELP + ".")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Output root: OUT/METHOD/DATASET/FID.hdf5.")
@click.option("--overwrite", is_flag=True, help="Replace the outputs of the methods asked for (others are kept).")
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda or cuda:N.")
@click.option("--batch-size", type=int, default=1, show_default=True, help="Frames per forward pass (frames of equal size).")
@click.option("--workers", type=int, default=None, help=WORKERS_HELP.format(work="decode frames; as many write the files"))
@click.option("--precision", type=RegistryChoice("oodseg.workflows.pipeline:PRECISIONS"), default="fp32", show_default=True,
              help="Autocast of the forward: bf16/fp16 only for logits-based scores (msp, entropy, energy, ...); "
                   "auto = bf16 (fp16) on CUDA when every score allows it, else fp32.")
@click.option("--dtype", type=RegistryChoice("oodseg.data.io:STORAGE_DTYPES"), default="float32", show_default=True,
              help="Precision of the stored maps: float32 evaluates exactly like the computed maps; float16 halves "
                   "the files (benchmark submissions) and warns for each method whose ranking it changes.")
@click.option("--compression", type=RegistryChoice("oodseg.data.io:COMPRESSIONS"), default="none", show_default=True,
              help="Storage of the hdf5 files, all read by h5py (the official SMIYC reader): none is the fastest to "
                   "write and read; gzip (level 1 + shuffle) saves ~19 % of the bytes of float32 maps, lzf ~14 %, "
                   "at 10-70x the write time (docs/performance.md).")
@json_option("the run summary")
def score(checkpoint, weights, model_args, normalize, channel_order, output_key, head, align_corners, images,
          dataset_kind, dataset_name, options, methods, preset, params, fit_data, fit_frames, ensemble, out, overwrite,
          device, batch_size, workers, precision, dtype, compression, as_json):
    """Score every frame of a dataset and write SMIYC score files (hdf5 dataset 'value', float32).

    Writes OUT/METHOD/DATASET/FID.hdf5 per method, OUT/_prediction/SHA16/DATASET/FID.png (argmax
    trainIds of the checkpoint whose weights' sha256 starts with SHA16) and one provenance file
    per method, OUT/_manifest/DATASET/METHOD.json (checkpoint and its sha256, parameters,
    protocol). An interrupted run is resumed by running the same command again. A method is
    added to an existing OUT without touching the others; a method's finished or different maps
    are replaced only with --overwrite, which replaces only the methods asked for. One score run
    at a time writes into OUT (a second is refused).
    Runs distributed under torchrun (frames sharded by rank). --dtype float16 writes the
    compact files the SMIYC benchmark ships; it merges nearby scores, and prints one
    'warning:' line per method whose ranking that changes (distinct values per frame before
    and after, and the AP/AUROC change when the dataset has OoD labels).

    \b
    Examples:
      oodseg score --checkpoint ckpt/baseline --images data/synth/anomaly \\
          --method entropy --method n_energy_cw --param n_energy_cw.eta=1.5 --out scores
      oodseg score --checkpoint ckpt/baseline --images data/synth/obstacle --method mahalanobis \\
          --fit-data data/synth/cityscapes --out scores --json
      oodseg score --checkpoint ckpt/baseline --images data/synth/anomaly --method msp \\
          --compression gzip --out scores
      torchrun --nproc_per_node=2 "$(which oodseg)" score --checkpoint ckpt/baseline \\
          --images data/synth/anomaly --method msp --method odin --out scores
      oodseg score --checkpoint ckpt/baseline --images /data/RoadAnomaly21 --method entropy \\
          --dtype float16 --out submission
      oodseg score --checkpoint ckpt/baseline --images /data/RoadAnomaly21 --method msp --method energy \\
          --device cuda --precision auto --batch-size 8 --workers 8 --out scores
      oodseg score --checkpoint ckpt/rpl --images /data/dataset_AnomalyTrack --preset rpl --out scores
      oodseg score --model hf:my-segformer --images data/synth/anomaly --method entropy --out scores
      oodseg score --model python:mynets:build_net --weights net.pth --model-arg num_classes=19 \\
          --normalize imagenet --head classifier.3 --images data/synth/anomaly --method msp --out scores
      oodseg score --checkpoint ckpt/mask2former --images data/synth/anomaly --method rba --method m2a \\
          --method eam --method maskomaly --fit-data data/synth/anomaly_val --out scores
    """
    from oodseg import distributed
    from oodseg.workflows.presets import get_preset
    from oodseg.workflows.score import score_dataset

    protocol = {}
    if preset is not None:
        chosen = get_preset(preset)
        methods = tuple(m for m in chosen.methods if m not in methods) + tuple(methods)
        protocol = {"resolution": chosen.resolution, "smooth": chosen.smooth, "preset": chosen.name}
        if distributed.is_main():
            click.echo(f"preset {chosen.name} ({chosen.paper}; {chosen.source}): {chosen.expansion()}", err=True)
    if not methods:
        raise OodsegError("--method: give at least one score method, or --preset NAME")
    checkpoint = model_source(checkpoint, weights, model_args, normalize, channel_order, output_key, head,
                              align_corners)
    try:
        summary = score_dataset(checkpoint, images, list(methods), out, params=parse_scoped(params, "--param", "METHOD", "odin.epsilon=0.002"),
                                dataset_kind=dataset_kind, dataset_name=dataset_name,
                                dataset_options=_parse_dataset_options(options), fit_data=fit_data,
                                fit_frames=fit_frames, ensemble=list(ensemble), overwrite=overwrite, device=device,
                                batch_size=batch_size, dtype=dtype, workers=workers, precision=precision,
                                compression=compression, **protocol)
        is_main = distributed.is_main()
    finally:
        distributed.cleanup()
    if not is_main:
        return
    if as_json:
        echo_json(summary)
        return
    click.echo(f"scored {summary['dataset']} ({summary['dataset_kind']}, {summary['n_frames']} frames) with "
               f"{', '.join(summary['methods'])}: {summary['written']} written, {summary['skipped']} already done "
               f"on this process, {summary['seconds']:.1f} s -> {summary['out']}")


def _list_presets(command: click.Command) -> None:
    """Append every score preset (name, paper, expansion) to ``command``'s help."""
    import inspect

    from oodseg.workflows.presets import presets_help

    command.help = (inspect.cleandoc(command.help) + "\n\n\b\nPresets (--preset NAME; docs/reproduce.md section 2):\n"
                    + presets_help())


_list_presets(score)


# --- report ---
@main.command("report")
@click.argument("results_dir", type=click.Path(file_okay=False, path_type=str))
@click.option("--out", required=True, type=click.Path(path_type=str),
              help="Report folder to create (index.html + PNGs + tables.md/csv/json).")
@click.option("--frames", default=4, show_default=True, type=click.IntRange(min=0),
              help="Example frames per dataset (0 = none; needs the datasets and score files the results point to).")
@click.option("--overwrite", is_flag=True, help="Replace an existing report folder at --out.")
@json_option("the report summary")
def report_command(results_dir: str, out: str, frames: int, overwrite: bool, as_json: bool) -> None:
    """Build an HTML report from the results files found under RESULTS_DIR.

    Reads the JSON written by `oodseg evaluate --json`, `meta --json`, `train` and
    `score` (any depth below RESULTS_DIR): ranking tables per dataset (sortable, best
    value highlighted), PR/ROC curves, score distributions, calibration, Meta-OoD and
    training charts, and example frames with one colour scale per method. The folder is
    self-contained (no network resources) and written atomically.

    \b
    Examples:
      oodseg report results --out report
      oodseg report results --out report --frames 8 --overwrite --json
    """
    from oodseg.workflows.report import build_report

    summary = build_report(results_dir, out, frames=frames, overwrite=overwrite)
    if as_json:
        echo_json(summary)
        return
    click.echo(f"report of {summary['evaluations']} evaluations ({summary['methods']} methods, "
               f"{len(summary['datasets'])} datasets), {summary['meta']} meta, {summary['training']} training runs "
               f"in {summary['seconds']:.1f} s -> {summary['index']}")


# --- train ---
def _flag_error(exc: OodsegError, config_type: type) -> OodsegError:
    """A library error that names fields of ``config_type`` (``steps: …``, ``resume=True``), worded
    with the CLI flags instead (``--steps: …``, ``--resume``, ``recipe_params`` → ``--param``); any other
    error unchanged."""
    import dataclasses

    flags = {f.name: "--" + f.name.replace("_", "-") for f in dataclasses.fields(config_type)}
    ctx = click.get_current_context(silent=True)
    flags.update({p.name: max(p.opts, key=len) for p in (ctx.command.params if ctx else ())
                  if isinstance(p, click.Option)})
    worded = cli_wording(str(exc), flags)
    return exc if worded == str(exc) else OodsegError(worded)


@main.command("train")
@click.option("--recipe", type=RegistryChoice("oodseg.training.recipe:RECIPES"), default=None,
              help="Training method (a loss + a data recipe; default: baseline).")
@click.option("--data", required=True, type=click.Path(file_okay=False),
              help="SynthStreet root (oodseg synth --out DIR) or a Cityscapes root (leftImg8bit/, gtFine/).")
@click.option("--out", required=True, type=click.Path(file_okay=False),
              help="Output folder: checkpoint/, log.jsonl, train.json, trainer_state.pt.")
@click.option("--arch", type=RegistryChoice("oodseg.models:available_architectures"), default=None,
              help="Architecture when training from scratch (default: small).")
@click.option("--arch-param", "arch_params", multiple=True, metavar="KEY=VALUE",
              help="Architecture parameter, repeatable (e.g. widths=[24,48,96,128], backbone=resnet50).")
@click.option("--init", default=None, help="Start from this model: " + MODEL_SOURCE_HELP + ".")
@model_source_options
@click.option("--param", "-p", "recipe_params", multiple=True, metavar="KEY=VALUE",
              help="Recipe parameter, repeatable (baseline: class_weight_power=0.5, hard_fraction=1, "
                   "head_resolution=true; "
                   "entropy-max: lam=0.9, mode=paste|mix, rate=0.5).")
@click.option("--outliers", type=click.Path(file_okay=False), default=None,
              help="Outlier pool: folder with images/ and masks/ (default: DATA/outliers for SynthStreet).")
@click.option("--outlier-mask-suffix", default=None, help="What outlier mask names add to the image stem (e.g. _mask).")
@click.option("--steps", type=int, default=None, help="Optimizer steps (recipe default; wins over --epochs).")
@click.option("--epochs", type=float, default=None, help="Length in passes over the training images.")
@click.option("--time-budget", type=float, default=None, help="Stop after this many seconds of training (final checkpoint still written).")
@click.option("--batch-size", type=int, default=None, help="Global batch size (split over torchrun processes).")
@click.option("--crop-size", type=int, default=None, help="Square training crop side in pixels.")
@click.option("--lr", type=float, default=None, help="Learning rate.")
@click.option("--weight-decay", type=float, default=None, help="Weight decay.")
@click.option("--optimizer", type=click.Choice(["adam", "adamw", "sgd"]), default=None, help="Optimizer.")
@click.option("--schedule", type=click.Choice(["poly", "cosine", "constant"]), default=None, help="Learning-rate schedule.")
@click.option("--warmup-steps", type=int, default=None, help="Linear learning-rate warm-up steps.")
@click.option("--class-uniform", type=float, default=None,
              help="Fraction of crops centred on a pixel of a uniformly drawn class present in the frame (0..1).")
@click.option("--clip", type=float, default=None, help="Clip the gradient norm to this value.")
@click.option("--bn", type=click.Choice(["train", "frozen", "sync"]), default=None,
              help="Batch norm: per-process statistics, frozen (eval-mode) or SyncBatchNorm under torchrun.")
@click.option("--seed", type=int, default=None, help="Random seed (data order, augmentation, outliers, init).")
@click.option("--device", default=None, help="cpu, cuda, cuda:1, ... (default: cpu).")
@click.option("--amp", type=click.Choice(["auto", "bf16", "fp16", "off"]), default=None,
              help="Mixed precision (auto: bf16 on CUDA, off on CPU).")
@click.option("--log-every", type=int, default=None, help="Write log.jsonl every N steps.")
@click.option("--ckpt-every", type=int, default=None, help="Write the checkpoint and trainer state every N steps.")
@click.option("--num-workers", type=int, default=None, help="Data-loading worker processes.")
@click.option("--channels-last/--no-channels-last", default=None,
              help="Channels-last memory order for the model and images (default: on; faster on CPU).")
@click.option("--no-validate", is_flag=True, help="Skip the validation mIoU at the end.")
@click.option("--resume", is_flag=True,
              help="Continue the interrupted run in --out exactly where it stopped; options left out keep its values, "
                   "options that change its results are refused (--steps/--epochs set a new length).")
@click.option("--overwrite", is_flag=True, help="Start over in an --out that holds a previous run.")
@json_option("the oodseg.train summary")
def train_command(recipe, data, out, arch, arch_params, init, weights, model_args, normalize, channel_order,
                  output_key, head, align_corners, recipe_params, outliers, outlier_mask_suffix, steps,
                  epochs, time_budget, batch_size, crop_size, lr, weight_decay, optimizer, schedule, warmup_steps,
                  class_uniform, clip, bn, seed, device, amp, log_every, ckpt_every, num_workers, channels_last,
                  no_validate, resume, overwrite, as_json):
    """Train a segmentation network or fine-tune it for OoD detection.

    Writes OUT/checkpoint/ (load with oodseg.models.load_checkpoint), OUT/log.jsonl (every
    loss term), OUT/train.json (schema oodseg.train, with the validation mIoU) and
    OUT/trainer_state.pt (for --resume). Options left out take the recipe's defaults.

    \b
    Examples:
      oodseg train --recipe baseline --data data/synth --out ckpt/baseline
      oodseg train --recipe entropy-max --data data/synth --init ckpt/baseline/checkpoint --out ckpt/emax
      oodseg train --recipe entropy-max --data /data/cityscapes --outliers /data/coco_ood \\
          --init ckpt/deeplab --lr 1e-5 --epochs 4 --crop-size 480 -p mode=mix --device cuda
      oodseg train --recipe entropy-max --data data/synth --init hf:my-segformer --out ckpt/emax-segformer
      torchrun --nproc_per_node=2 "$(which oodseg)" train --data data/synth --out ckpt/ddp --bn sync
      oodseg train --recipe mask-baseline --data data/synth --out ckpt/m2f      # small-mask2former
      oodseg train --recipe rba --data data/synth --init ckpt/m2f/checkpoint --out ckpt/m2f-rba
    """
    from oodseg import distributed
    from oodseg.training import TrainConfig, make_config
    from oodseg.workflows.train import resumed_config, train

    model_options = (weights, model_args, normalize, channel_order, output_key, head, align_corners)
    if init is None and any(v not in (None, ()) for v in model_options):
        raise OodsegError("--init: the model options (--weights, --normalize, ...) describe --init; give it")
    if init is not None:
        init = model_source(init, *model_options).spec()
    try:
        options = dict(data=data, arch=arch, init=init, outliers=outliers,
                       outlier_mask_suffix=outlier_mask_suffix, steps=steps, epochs=epochs, time_budget=time_budget,
                       batch_size=batch_size, crop_size=crop_size, lr=lr, weight_decay=weight_decay,
                       optimizer=optimizer, schedule=schedule, warmup_steps=warmup_steps,
                       class_uniform=class_uniform, clip=clip, bn=bn, seed=seed, device=device, amp=amp,
                       log_every=log_every, ckpt_every=ckpt_every, num_workers=num_workers,
                       channels_last=channels_last, validate=False if no_validate else None,
                       overwrite=overwrite or None,
                       arch_params=parse_pairs(arch_params, "--arch-param") or None,
                       recipe_params=parse_pairs(recipe_params, "--param") or None)
        config = (resumed_config(out, recipe=recipe, **options) if resume  # options left out: as saved
                  else make_config(recipe or "baseline", out=out, **options))
        summary = train(config)
        is_main = distributed.is_main()
    except OodsegError as exc:
        raise _flag_error(exc, TrainConfig) from exc
    finally:
        distributed.cleanup()
    if not is_main:
        return
    if as_json:
        echo_json(summary)
        return
    miou = "–" if summary["val_mIoU"] is None else f"{100 * summary['val_mIoU']:.2f}%"
    click.echo(f"{summary['recipe']}: {summary['steps']} steps in {summary['seconds']:.1f} s, val mIoU {miou}; "
               f"checkpoint {summary['checkpoint']}")


# --- synth ---
@main.command("synth")
@click.option("--out", "out", required=True, type=click.Path(file_okay=False), help="Output folder (created).")
@click.option("--seed", default=0, show_default=True, type=int, help="Random seed; same seed → byte-identical files.")
@click.option("--size", "size", default="256x512", show_default=True, help="Image size HxW (multiples of 8, ≥ 64).")
@click.option("--frames", default=None,
              help="Counts per split, e.g. train=300,val=50,anomaly=40,obstacle=40,shifted=10,outliers=60,"
                   "anomaly_val=20,obstacle_val=20 (shifted is per condition; unnamed splits keep these defaults).")
@click.option("--overwrite", is_flag=True, help="Replace an existing non-empty output folder.")
@json_option("the manifest")
def synth_command(out: str, seed: int, size: str, frames: str | None, overwrite: bool, as_json: bool) -> None:
    """Generate the SynthStreet benchmark: street scenes, anomaly/obstacle tracks, shifted set, outlier pool.

    \b
    Writes Cityscapes-layout train/val (and shifted night/fog/blur/noise) splits, SMIYC-layout
    anomaly and obstacle tracks, their validation tracks anomaly_val and obstacle_val (held-out
    objects and scenes, for choosing thresholds and recipe settings), an outlier object pool
    disjoint from both, and DIR/synthstreet.json. Deterministic. Rerunning with the same seed,
    size and frames on a complete folder is a no-op ("cached"); a folder of an earlier oodseg
    without the validation tracks gets them added, its other files untouched; an interrupted
    run never leaves a complete-looking folder.
    \b
    Examples:
      oodseg synth --out data/synth
      oodseg synth --out data/tiny --size 128x256 --frames train=50,val=10,anomaly=10,obstacle=10 --seed 1
      oodseg synth --out data/synth --seed 2 --overwrite --json
    """
    from oodseg.data.synthetic import generate, parse_size

    manifest = generate(out, seed=seed, size=parse_size(size), frames=frames, overwrite=overwrite, progress=True)
    if as_json:
        echo_json(manifest)
        return
    counts = manifest["frames"]
    state = "up to date (cached)" if manifest["cached"] else (
        f"completed with {', '.join(manifest['added'])}" if manifest.get("added") else "written")
    click.echo(f"SynthStreet {manifest['size'][0]}x{manifest['size'][1]} seed {manifest['seed']} {state} in {out}: "
               f"train {counts['train']}, val {counts['val']}, anomaly {counts['anomaly']}, obstacle {counts['obstacle']}, "
               f"shifted {counts['shifted']}x4, outliers {counts['outliers']}, "
               f"anomaly_val {counts['anomaly_val']}, obstacle_val {counts['obstacle_val']}; "
               f"{len(manifest['classes_present'])} classes present")


# --- demo ---
@main.command("demo")
@click.option("--out", default="demo-out", show_default=True, type=click.Path(file_okay=False),
              help="Output folder; every step is cached there, so a rerun only redoes what is missing.")
@click.option("--seed", default=0, show_default=True, help="SynthStreet and training seed.")
@click.option("--method", "methods", multiple=True, help="Score only these methods (default: every post-hoc score).")
@click.option("--frames", "report_frames", default=4, show_default=True, help="Example frames per track in the report.")
@click.option("--quick", is_flag=True, help="Tiny data and a few training steps (a smoke test in seconds).")
@click.option("--family", type=click.Choice(["pixel", "mask", "all"]), default="pixel", show_default=True,
              help="pixel: the per-pixel scores on the small DeepLabv3+-style model; mask: the small Mask2Former "
                   "(closed-set + RbA fine-tuning) with rba, m2a, eam, maskomaly and the logit scores on its "
                   "aggregated P; all: both. The tables and report rank every method evaluated in --out.")
@json_option("the ranking tables and timings")
def demo_command(out: str, seed: int, methods: tuple[str, ...], report_frames: int, quick: bool, family: str,
                 as_json: bool) -> None:
    """Run everything on SynthStreet: generate, train, score, evaluate, rank, report.

    \b
    Example:
      oodseg demo --out demo-out        # ~10 min on 2 CPU cores the first time, ~1-2 min after
      oodseg demo --out demo-out --family mask   # adds the Mask2Former detectors to the same tables
      open demo-out/report/index.html
    """
    from oodseg.workflows.demo import DEMO_METHODS, DemoConfig, run_demo

    log = (lambda message: click.echo(message, err=True))
    config = DemoConfig(out=out, seed=seed, methods=methods or DEMO_METHODS, report_frames=report_frames,
                        quick=quick, family=family, log=log)
    result = run_demo(config)
    if as_json:
        echo_json(result)
    else:
        click.echo(f"results: {result['out']}/results.md · report: {result['out']}/report/index.html")


# --- bench ---
@main.command("bench", context_settings={"ignore_unknown_options": True})
@click.argument("names", nargs=-1, type=click.UNPROCESSED)
@click.option("--quick", is_flag=True, help="Smaller inputs (each script's --quick).")
def bench_command(names: tuple[str, ...], quick: bool) -> None:
    """Run the speed/memory benchmarks of a source checkout (benchmarks/*.py); print their ratios.

    Options after the names go to the scripts (see `python benchmarks/NAME.py --help`).

    \b
    Examples:
      oodseg bench scores metrics --quick
      oodseg bench pipeline --only evaluate --official ~/road-anomaly-benchmark
    """
    first_option = next((i for i, name in enumerate(names) if name.startswith("-")), len(names))
    names, script_args = names[:first_option], list(names[first_option:])
    import runpy
    from pathlib import Path

    folder = Path(__file__).resolve().parents[2] / "benchmarks"
    if not folder.is_dir():
        raise OodsegError(f"{folder}: benchmarks are only available in a source checkout of oodseg")
    available = sorted(p.stem for p in folder.glob("*.py") if not p.stem.startswith("_"))
    unknown = sorted(set(names) - set(available))
    if unknown:
        raise OodsegError(f"unknown benchmark {unknown[0]!r} (available: {', '.join(available)})")
    for name in names or available:
        click.echo(f"== benchmarks/{name}.py", err=True)
        argv, path = sys.argv, list(sys.path)
        sys.argv = [str(folder / f"{name}.py")] + (["--quick"] if quick else []) + script_args
        sys.path.insert(0, str(folder))  # as when run as a script: the scripts share benchmarks/_timing.py
        try:
            runpy.run_path(str(folder / f"{name}.py"), run_name="__main__")
        finally:
            sys.argv, sys.path[:] = argv, path


# --- meta ---
def _print_meta_table(result: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    def fmt(value, digits=3):
        return "–" if value is None else f"{value:.{digits}f}"

    console = Console()
    c = result["classification"]
    console.print(f"meta classification ({result['model']}, {result['cv']}) on {result['dataset']}, "
                  f"segments {result['segments']}: {result['n_segments']} segments, {result['n_features']} features; "
                  f"AUROC {fmt(c['AUROC'])} (MSP baseline {fmt(c['baseline_AUROC'])}), "
                  f"AUPRC {fmt(c['AUPRC'])} (baseline {fmt(c['baseline_AUPRC'])})"
                  + (f"; regression R² {fmt(result['regression']['R2'])}" if result["regression"] else ""))
    if result["thresholds"]:
        table = Table(title="Meta-OoD detection errors before → after removing segments classified false positive")
        for column in ("t", "FP", "FN", "F1", "road miss %", "AUROC", "AUROC MSP"):
            table.add_column(column, justify="right")
        for row in result["thresholds"]:
            b, a, m = row["before"], row["after"], row["classification"]
            miss = [None if x["miss_rate"] is None else 100 * x["miss_rate"] for x in (b, a)]
            table.add_row(f"{row['t']:g}", f"{b['FP']} → {a['FP']}", f"{b['FN']} → {a['FN']}",
                          f"{fmt(b['F1'])} → {fmt(a['F1'])}", f"{fmt(miss[0], 2)} → {fmt(miss[1], 2)}",
                          fmt(m["AUROC"]), fmt(m["baseline_AUROC"]))
        console.print(table)
    if result["lars"]:
        console.print("LARS order: " + ", ".join(name for name, _ in result["lars"][:12]))
    if result["filtered"]:
        console.print(f"filtered score maps: {result['filtered']}")


def _parse_thresholds(text: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise OodsegError(f"--thresholds: {text!r} is not a comma-separated list of numbers") from None
    if not values:
        raise OodsegError("--thresholds: give at least one threshold")
    return values


@main.command("meta")
@click.option("--dataset", "kind", type=RegistryChoice("oodseg.data:available_kinds"), default=None,
              help="Dataset layout (e.g. smiyc-anomaly, cityscapes); default: detected from --root.")
@click.option("--root", required=True, type=click.Path(file_okay=False), help="Dataset root folder (labelled frames are used).")
@click.option("--option", "-o", "options", multiple=True, metavar="KEY=VALUE",
              help="Dataset option, repeatable (e.g. split=val, target=semantic for SynthStreet tracks with --segments class).")
@click.option("--scores", "scores_dir", type=click.Path(file_okay=False), default=None,
              help="Score files OUT/METHOD/DATASET/{fid}.hdf5 thresholded into segments (required for entropy:T).")
@click.option("--probs", required=True,
              help="A model re-run for softmax/PGN (" + MODEL_SOURCE_HELP + ") or a folder of {fid}.npz with "
                   "array 'probs' (C,H,W) float16 softmax at image size.")
@click.option("--segments", default="entropy:0.3", show_default=True,
              help="entropy:T (Meta-OoD: components of score >= T) or class (MetaSeg: components of each predicted class).")
@click.option("--threshold-from", "threshold_from", type=click.Path(dir_okay=False), default=None,
              help="oodseg.meta JSON of an entropy:T run on a validation set (e.g. SynthStreet anomaly_val): the "
                   "segments are entropy:t with its t of best F1 after filtering (replaces --segments).")
@click.option("--features", default="metaseg", show_default=True,
              help="Comma-separated feature sets: metaseg (75 Meta-OoD features for 19 classes), gradient (PGN maps; "
                   "needs a checkpoint), score (statistics of the --scores map).")
@click.option("--model", type=click.Choice(["logistic", "gbm"]), default="logistic", show_default=True,
              help="logistic: logistic/linear regression on z-scored features; gbm: gradient boosting.")
@click.option("--cv", default="image-kfold:5", show_default=True,
              help="Cross-validation grouped by image: image-kfold:K or loo (leave one image out).")
@click.option("--thresholds", default="0.1,0.2,0.3,0.4,0.5,0.6,0.7", show_default=True,
              help="Thresholds t of the before/after detection table (entropy segments).")
@click.option("--filtered-out", type=click.Path(file_okay=False), default=None,
              help="Write score maps with rejected segments suppressed to DIR/{method}_meta/{dataset}/{fid}.hdf5.")
@click.option("--method", default=None, help="Method name (default: parent folder of --scores).")
@click.option("--device", default="cpu", show_default=True, help="Where a --probs checkpoint runs (cpu, cuda, cuda:1).")
@json_and_save_options("the oodseg.meta result object")
@click.option("--overwrite", is_flag=True, help="Replace an existing --save file and --filtered-out maps.")
def meta_command(kind, root, options, scores_dir, probs, segments, threshold_from, features, model, cv, thresholds,
                 filtered_out, method, device, json_out, save, overwrite):
    """Segment-wise meta classification/regression: remove false-positive OoD segments (Meta-OoD) or
    estimate segment IoU (MetaSeg), with image-grouped cross-validation.

    Prints AUROC/AUPRC of finding false-positive segments (vs the mean-MSP baseline), R² of the
    IoU regression, the LARS feature order and, for entropy:T segments, FP/FN/F1/road miss rate
    before and after removal per threshold.

    \b
    Examples:
      oodseg score --checkpoint ckpt/baseline/checkpoint --images data/synth/anomaly --method entropy --out scores
      oodseg meta --dataset smiyc-anomaly --root data/synth/anomaly --scores scores/entropy/anomaly \\
          --probs ckpt/baseline/checkpoint --segments entropy:0.3 --filtered-out scores --save meta.json
      oodseg evaluate --root data/synth/anomaly --scores scores/entropy_meta/anomaly
      oodseg meta --root data/synth/anomaly_val --scores scores/entropy/anomaly_val \\
          --probs ckpt/baseline/checkpoint --save meta-val.json
      oodseg meta --root data/synth/anomaly --scores scores/entropy/anomaly \\
          --probs ckpt/baseline/checkpoint --threshold-from meta-val.json --save meta.json
      oodseg meta --dataset cityscapes --root data/synth/cityscapes -o split=val --probs ckpt/baseline/checkpoint \\
          --segments class --features metaseg,gradient --cv loo --json
    """
    from oodseg.atomic import write_json
    from oodseg.data import detect_kind, open_dataset
    from oodseg.workflows.meta import run_meta

    as_json, save = json_target(json_out, save, overwrite)
    provenance = None
    if threshold_from is not None:
        from oodseg.workflows.selection import meta_threshold_from

        t, provenance = meta_threshold_from(threshold_from)
        segments = f"entropy:{t:g}"
    dataset_options = {"labels": "available", **_parse_dataset_options(options)}
    dataset = open_dataset(kind or detect_kind(root), root, **dataset_options)
    result = run_meta(dataset, probs=probs, scores_dir=scores_dir, segments=segments, features=features, model=model,
                      cv=cv, thresholds=_parse_thresholds(thresholds), filtered_out=filtered_out, method=method,
                      overwrite=overwrite, device=device)
    if provenance is not None:
        result["segments_threshold_from"] = provenance
    if save is not None:
        write_json(save, result)
    if as_json:
        echo_json(result)
        return
    _print_meta_table(result)


# --- import ---
@main.command("import")
@click.argument("file", metavar="FILE|SOURCE")
@click.option("--format", "fmt", type=RegistryChoice("oodseg.models.importing:FORMATS", ("auto",)), default="auto",
              show_default=True, help="Source format: auto (from the keys) or one of the published files' formats.")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="oodseg checkpoint directory to write.")
@click.option("--num-classes", type=int, default=None,
              help="Classes of the classifier (published files: default 19); a model with another count is refused.")
@model_source_options
@click.option("--overwrite", is_flag=True, help="Replace an existing --out directory.")
@json_option("the import summary")
def import_command(file: str, fmt: str, out: str, num_classes: int | None, weights, model_args, normalize,
                   channel_order, output_key, head, align_corners, overwrite: bool, as_json: bool) -> None:
    """Import a seed paper's published PyTorch checkpoint FILE, or any model source, as an oodseg checkpoint.

    A model source (python:MODULE:FACTORY with --weights, hf:DIR, torchvision:NAME, or a checkpoint
    directory) is written with its conventions (--normalize, --channel-order, --output-key,
    --head, --align-corners) and what rebuilds it (the factory path and --model-arg values, or
    the transformers config), so later commands need only OUT; OUT is reloaded and must
    reproduce the source's logits before it appears. See docs/models.md.

    Reads FILE with torch.load(weights_only=True) (only tensors and numpy scalars are allowed;
    zip files are memory-mapped), strips the DataParallel/RPL key prefixes, drops NVIDIA's
    criterion weight and loads it strictly into the matching architecture. Writes
    OUT/model.safetensors and OUT/model.json, which records the source file's name, sha256 and
    format and how the source ran it (normalisation, align_corners, classifier stride).
    Nothing is written on error. See docs/reproduce.md for where each file is published.

    \b
    Examples:
      oodseg import cityscapes_best.pth --out ckpt/nvidia-wrn38
      oodseg import --format meta-ood DeepLabV3+_WideResNet38_epoch_4_alpha_0.9.pth --out ckpt/meta-ood
      oodseg import --format smiyc-baseline DeepLabV3+_WideResNet38_baseline.pth --out ckpt/smiyc-baseline
      oodseg import --format rpl-corocl rev3.pth --out ckpt/rpl-corocl --json
      oodseg score --checkpoint ckpt/nvidia-wrn38 --images data/synth/anomaly --method entropy --out scores
      oodseg import hf:my-segformer --out ckpt/segformer
      oodseg import python:mynets:build_net --weights net.pth --model-arg num_classes=19 \\
          --normalize imagenet --out ckpt/mynet
    """
    from pathlib import Path

    from oodseg import progress
    from oodseg.models.importing import import_checkpoint
    from oodseg.models.sources import import_model_source, is_model_source

    log = (lambda message: click.echo(message, err=True)) if progress.enabled() else None
    model_options = (weights, model_args, normalize, channel_order, output_key, head, align_corners)
    if not Path(file).is_file() and (is_model_source(file) or any(v not in (None, ()) for v in model_options)):
        if fmt != "auto":
            raise OodsegError(f"--format: applies to published .pth files, not to the model source {file}")
        summary = import_model_source(model_source(file, *model_options), out, overwrite=overwrite,
                                      num_classes=num_classes, log=log)
        if as_json:
            echo_json(summary)
            return
        click.echo(f"{summary['source']['spec']}: {summary['num_classes']} classes, {summary['parameters']:,} "
                   f"parameters → {summary['out']} ({summary['architecture']})")
        return
    summary = import_checkpoint(file, out, fmt=fmt, num_classes=num_classes or 19, overwrite=overwrite, log=log)
    if as_json:
        echo_json(summary)
        return
    source = summary["source"]
    click.echo(f"{source['file']} ({source['format']}, sha256 {source['sha256'][:12]}…): {summary['keys']} tensors, "
               f"{summary['parameters']:,} parameters → {summary['out']} ({summary['architecture']}) "
               f"in {summary['seconds']:.1f} s")
