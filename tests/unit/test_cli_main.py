"""The CLI's dispatch: one table of commands, and only the command being run is imported."""

from __future__ import annotations

import argparse

import pytest

from mpupload.cli.main import COMMANDS, build_parser


def _listed(parser: argparse.ArgumentParser) -> dict[str, str | None]:
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return {choice.dest: choice.help for choice in sub._choices_actions}


def test_the_table_lists_every_command_with_the_help_its_module_registers() -> None:
    full = _listed(build_parser())
    table = {name: line for names in COMMANDS.values() for name, line in names.items()}
    assert full == table  # same names, same order of listing, same lines
    assert list(full) == list(table)


@pytest.mark.parametrize("command", [name for names in COMMANDS.values() for name in names])
def test_a_lazily_built_parser_parses_its_command_like_the_full_one(command: str) -> None:
    lazy = build_parser([command])
    assert _listed(lazy) == _listed(build_parser([]))
    built = next(a for a in lazy._actions if isinstance(a, argparse._SubParsersAction)).choices[command]
    full = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)).choices[command]
    assert built.format_help() == full.format_help()
