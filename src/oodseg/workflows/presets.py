"""Paper protocols for ``oodseg score --preset NAME``: each seed's test-time computation (SPEC §8).

A preset expands to score methods (``name`` or ``name[key=value,…]``), the resolution at which
they are computed and an optional smoothing of the finished maps:

- ``resolution="image"``: the scores see the logits (and ``z``, extra heads) bilinearly upsampled to
  the image with the model's ``align_corners``, as the sources score their upsampled outputs;
  ``"head"``: at the classifier's resolution, the map upsampled afterwards (oodseg's default).
- ``smooth``: ``{"kernel_size": K, "sigma": S}`` Gaussian blur with reflect padding of each map at
  the image size (:func:`oodseg.scores.postprocess.gaussian_blur`), or None.

The expansion is printed by the CLI and recorded in the score manifest (``preset``, ``resolution``,
``smooth``), so a preset run is an ordinary, reproducible score run.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from oodseg.errors import OodsegError

RESOLUTIONS = ("head", "image")
PGN_P = (0.1, 0.3, 0.5, 1, 2)


@dataclass(frozen=True)
class Preset:
    """One paper's test-time protocol (see the module docstring for the fields' meaning)."""

    name: str
    paper: str
    source: str
    methods: tuple[str, ...]
    resolution: str = "image"
    smooth: dict[str, Any] | None = None
    note: str = ""
    #: short form of ``methods`` for the help text (the methods themselves when empty)
    summary: str = ""

    def expansion(self, short: bool = False) -> str:
        """One line: the methods (``short``: their summary), resolution and smoothing this preset stands for."""
        smooth = ("none" if self.smooth is None else
                  f"gaussian {self.smooth['kernel_size']}×{self.smooth['kernel_size']}, σ={self.smooth['sigma']:g}, "
                  "reflect padding")
        methods = self.summary if short and self.summary else " ".join(f"--method {m}" for m in self.methods)
        return f"{methods}; scores at the {self.resolution} resolution; smoothing: {smooth}"

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready record (stored in the score manifest)."""
        return {"name": self.name, "paper": self.paper, "source": self.source, "methods": list(self.methods),
                "resolution": self.resolution, "smooth": self.smooth, "note": self.note}


PRESETS: dict[str, Preset] = {preset.name: preset for preset in (
    Preset("rpl", "Liu et al., Residual Pattern Learning (RPL), ICCV 2023",
           "yyliu01/RPL rpl.code/valid.py", ("energy",), "image", {"kernel_size": 7, "sigma": 1.0},
           "energy −logsumexp of the residual logits (the forward output of deepwv3plus-rpl or an oodseg 'rpl' "
           "checkpoint), then torchvision's GaussianBlur(7, sigma=1)"),
    Preset("densehybrid", "Grcić et al., DenseHybrid, ECCV 2022",
           "matejgrcic/DenseHybrid evaluations/evaluations.py", ("densehybrid",), "image", None,
           "−logsumexp(l) + log softmax(l_ood)[1] on both heads' upsampled outputs (deepwv3plus-th, ldn121)"),
    Preset("smiyc-baselines", "Chan et al., SegmentMeIfYouCan, NeurIPS 2021 Datasets and Benchmarks",
           "SegmentMeIfYouCan/road-anomaly-benchmark methods/baselines.py, methods/utils.py",
           ("msp", "entropy", "odin[variant=smiyc]", "mahalanobis"), "image", None,
           "ODIN with their T=3, ε=1e-4 and their sign; Mahalanobis on the upsampled 256-channel classifier "
           "input with one shared covariance (SPEC §1; their file stores one per class); needs --fit-data"),
    Preset("pgn", "Maag & Riedlinger, Pixel-wise Gradient Uncertainty (PGN), 2024",
           "tobiasriedlinger/uncertainty-gradients-seg segmentation/network/deepv3.py",
           tuple(f"pgn[label={label},layer={layer},log_scale=true,p={p}]" for layer in ("last", "second_to_last")
                 for label in ("onehot", "uniform") for p in PGN_P), "head", None,
           "variant=paper, one-hot and uniform labels, p ∈ {0.1, 0.3, 0.5, 1, 2}, last and second-to-last "
           "layer (their 20 channels), at the classifier's resolution; log of the norm (same ranking)",
           "20× --method pgn[label=L,layer=Y,log_scale=true,p=P] for L ∈ {onehot, uniform}, Y ∈ {last, "
           "second_to_last}, P ∈ {0.1, 0.3, 0.5, 1, 2}"),
    Preset("meta-ood", "Chan et al., Entropy Maximization and Meta Classification (Meta-OoD), ICCV 2021",
           "robin-chan/meta-ood src/model_utils.py", ("entropy",), "image", None,
           "normalised entropy of the full-resolution softmax"),
)}


def get_preset(name: str) -> Preset:
    """The preset ``name``; OodsegError listing the presets otherwise."""
    if name not in PRESETS:
        raise OodsegError(f"preset: unknown preset {name!r} (available: {', '.join(PRESETS)})")
    return PRESETS[name]


def presets_help() -> str:
    """One line per preset: name, paper, expansion (for ``oodseg score --help``)."""
    return "\n".join(f"{p.name}: {p.paper} — {p.expansion(short=True)}" for p in PRESETS.values())
