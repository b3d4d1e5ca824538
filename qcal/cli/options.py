"""What every `qcal` subcommand's parser shares: the help formatter (every default shown, examples kept as written)
and the options two or more subcommands take, each defined once here so its name, type, choices and default are
the same wherever it appears (tests/cli/test_cli_consistency.py checks the built parsers)."""

from __future__ import annotations

import argparse
import textwrap
from typing import Any

from qcal.config import Observer, Target

THREADS_DEFAULT = 2   # ONNX Runtime intra-op threads, as qcal.quantize(threads=) and qcal.robustness(threads=)


class HelpFormatter(argparse.HelpFormatter):
    """Each option's help ends with "(default: X)" when it has a default to show (not None, not False) and its
    text does not already state one. Description and epilog lines are wrapped one by one, and lines that start
    with a space (examples, tables) are kept exactly as written."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "(default" in text or action.default in (None, False, argparse.SUPPRESS) or not action.option_strings:
            return text
        return text + " (default: %(default)s)"

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        lines = []
        for line in text.splitlines():
            if line[:1].isspace() or not line:
                lines.append(indent + line)
            else:
                lines.append(textwrap.fill(line, width, initial_indent=indent, subsequent_indent=indent))
        return "\n".join(lines)


def add_subcommand(sub: argparse._SubParsersAction, name: str, *, help: str, description: str,  # type: ignore[type-arg]
                   examples: list[str]) -> argparse.ArgumentParser:
    """A subcommand whose --help shows its defaults and ends with its examples (each one line)."""
    epilog = "example" + ("s" if len(examples) > 1 else "") + ":\n" + "\n".join(f"  {e}" for e in examples)
    p: argparse.ArgumentParser = sub.add_parser(name, help=help, description=description, epilog=epilog,
                                                formatter_class=HelpFormatter)
    return p


def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """{name: parser} of `parser`'s subcommands (argparse keeps them in its subparsers action)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def options_of(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    """{dest: action} of `parser`'s options (not its positionals, not --help)."""
    return {a.dest: a for a in parser._actions if a.option_strings and not isinstance(a, argparse._HelpAction)}


# --- the shared options -------------------------------------------------------------------------------------------
def add_target(p: argparse.ArgumentParser, help: str | None = None) -> None:
    p.add_argument("--target", choices=[t.value for t in Target], help=help or "where the INT8 model runs: ort-cpu "
                   "(uint8 activations, int8 per-channel weights, reduce_range chosen from the CPU's VNNI flag) or "
                   "tensorrt (int8 symmetric, zero point 0) (default: the config's target, ort-cpu)")


def add_observer(p: argparse.ArgumentParser, help: str | None = None) -> None:
    p.add_argument("--observer", choices=[o.value for o in Observer], help=help or "how activation ranges are "
                   "chosen: blend = the mean of the MSE and the 99.999th-percentile range; mse, percentile, entropy "
                   "and minmax as usual (default: the config's observer, blend)")


def add_threads(p: argparse.ArgumentParser, help: str | None = None) -> None:
    p.add_argument("--threads", type=int, default=THREADS_DEFAULT, help=help or "ONNX Runtime threads")


def add_config(p: argparse.ArgumentParser, help: str | None = None) -> None:
    p.add_argument("--config", help=help or "a TOML config (see `qcal config`; unknown keys are an error)")


def add_calib(p: argparse.ArgumentParser, help: str, *, required: bool = False) -> None:
    p.add_argument("--calib", required=required, help=help)


def add_eval(p: argparse.ArgumentParser, help: str) -> None:
    p.add_argument("--eval", help=help)


def add_out(p: argparse.ArgumentParser, help: str, *, default: str | None, required: bool = False) -> None:
    """-o/--out: its default is the subcommand's own (an output set, a report folder, an engine file)."""
    kw: dict[str, Any] = {"required": True} if required else {"default": default}
    p.add_argument("-o", "--out", help=help, **kw)


def add_trust_checkpoint(p: argparse.ArgumentParser) -> None:
    p.add_argument("--trust-checkpoint", action="store_true", help="allow unpickling the checkpoint (it runs code "
                   "from the file: only for files you trust)")


def add_allow_outside_recipe_root(p: argparse.ArgumentParser) -> None:
    p.add_argument("--allow-outside-recipe-root", action="store_true", help="let paths written inside a .toml "
                   "recipe (--calib, --eval) point outside the recipe's folder (only for recipes you trust)")


def add_no_progress(p: argparse.ArgumentParser) -> None:
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
