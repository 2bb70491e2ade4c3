"""CLI help: every flag of every subcommand has a one-line help that names its default, and
``--help`` ends with example command lines that the parser accepts."""

import argparse
import shlex

import pytest

from napari_unetseg.cli import build_parser, main
from napari_unetseg.cli._common import HelpFormatter


def _subparsers() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


SUBPARSERS = _subparsers()


def _arguments(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    return [a for a in parser._actions if not isinstance(a, argparse._HelpAction)]


@pytest.mark.parametrize("name", sorted(SUBPARSERS))
def test_every_argument_has_one_line_help_naming_its_default(name):
    parser = SUBPARSERS[name]
    formatter = HelpFormatter(parser.prog)
    missing = []
    for action in _arguments(parser):
        flag = "/".join(action.option_strings) or action.dest
        if not action.help or "\n" in action.help:
            missing.append(f"{flag}: no one-line help")
            continue
        if action.option_strings and not action.required:
            text = formatter._get_help_string(action) % {"default": action.default}
            if "default:" not in text:
                missing.append(f"{flag}: help does not name its default ({action.default!r})")
    assert not missing, f"napari-unetseg {name}: " + "; ".join(missing)


@pytest.mark.parametrize("name", sorted(SUBPARSERS))
def test_help_shows_examples_that_parse(name, capsys):
    with pytest.raises(SystemExit) as e:
        main([name, "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "example" in out
    lines = [ln.strip() for ln in out.split("example")[-1].splitlines()
             if ln.strip().startswith(f"napari-unetseg {name}")]
    assert lines, out
    for line in lines:  # each example is a valid command line of this subcommand
        args = build_parser().parse_args(shlex.split(line)[1:])
        assert args.command == name


def test_defaults_appear_in_the_help_text(capsys):
    with pytest.raises(SystemExit):
        main(["predict", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "(default: labels)" in out  # --output, from argparse's default
    assert "(default: off)" in out  # a switch (--tta)
    assert "default: accurate" in out  # --level: None, said in words
    assert "show this help message and exit (default" not in out
