"""The CLI ↔ library seams: choices read from the registries (lazily: `oodseg --help` imports no torch),
and library errors naming TrainConfig fields reworded with the CLI's flags."""
import subprocess
import sys

from click.testing import CliRunner

from oodseg.cli import _flag_error, cli_wording, main
from oodseg.data import available_kinds
from oodseg.data.io import STORAGE_DTYPES
from oodseg.errors import OodsegError
from oodseg.metrics.calibration import CONFIDENCE_MAPS
from oodseg.models import available_architectures
from oodseg.models.importing import FORMATS
from oodseg.training import RECIPES, TrainConfig
from oodseg.workflows.evaluate import PROTOCOLS


def test_group_help_imports_no_registry():
    code = ("import sys\nfrom oodseg.cli import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "heavy = sorted(m for m in ('torch', 'numpy', 'oodseg.training', 'oodseg.scores') if m in sys.modules)\n"
            "print('HEAVY', heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "HEAVY []" in out, out


def _choices(command: str, option: str) -> list[str]:
    params = {p.name: p for p in main.commands[command].params}
    return list(params[option].type.choices)


def test_choices_come_from_the_registries():
    assert _choices("train", "recipe") == list(RECIPES)
    assert _choices("evaluate", "protocol") == list(PROTOCOLS)
    assert _choices("evaluate", "confidence") == ["auto", *CONFIDENCE_MAPS]
    assert _choices("score", "dtype") == list(STORAGE_DTYPES)
    assert _choices("score", "dataset_kind") == _choices("evaluate", "kind") == _choices("meta", "kind") == available_kinds()
    assert _choices("train", "arch") == available_architectures()
    assert _choices("import", "fmt") == ["auto", *FORMATS]
    text = CliRunner().invoke(main, ["train", "--help"]).output
    assert "[" + "|".join(RECIPES) + "]" in text


def test_training_errors_are_reworded_with_flags():
    reworded = _flag_error(OodsegError("outliers: the rpl recipe needs an outlier pool (images/ + masks/)"), TrainConfig)
    assert str(reworded) == "--outliers: the rpl recipe needs an outlier pool (images/ + masks/)"
    assert str(_flag_error(OodsegError("crop_size: 4 is smaller than 8"), TrainConfig)) == "--crop-size: 4 is smaller than 8"
    other = OodsegError("/x: missing")
    assert _flag_error(other, TrainConfig) is other


def test_library_errors_are_worded_with_the_invoked_commands_flags(tmp_path):
    """Library errors name arguments (``probs /x: …``); the CLI shows the command's flags instead."""
    flags = {"probs": "--probs", "threshold_from": "--threshold-from", "resume": "--resume"}
    assert cli_wording("probs /x: not found", flags) == "--probs /x: not found"
    assert cli_wording("threshold_from a.json: file not found", flags) == "--threshold-from a.json: file not found"
    assert cli_wording("probs/resume: conflict; resume=True given", flags) == "--probs/--resume: conflict; --resume given"
    assert cli_wording("/x: missing", flags) == "/x: missing"
    assert cli_wording("steps: must be >= 1", flags) == "steps: must be >= 1"  # not a flag of this command
    result = CliRunner().invoke(main, ["synth", "--out", str(tmp_path / "s"), "--size", "bogus"])
    assert result.exit_code == 2 and result.stderr == "error: --size 'bogus': expected HxW, e.g. 256x512\n", result.stderr
