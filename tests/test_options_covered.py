"""Every option of every command is run by some test: the options are read from the parsers themselves
(each subcommand of `minipss`, and `python -m minipss.weights`), so an option added later without a test
fails here.

Where a mention is looked for, stated once: a test file (any `tests/*.py`, helpers included) *runs* a
command when the command's name is a string element of a list or tuple, or a string argument of a call
(`["pss", "--model", ...]`, `run_minipss("sweep", ...)`, `run(..., command="sweep")`, `[python, "-m",
"minipss.weights", ...]`), not a dictionary key or a subscript such as `result["pss"]`. An option of that command is
*mentioned* when the same file holds the option string as a string constant of its own (`"--accum"`, or
`"--accum=2"`); a pattern or message that merely contains it does not count."""

import argparse
import ast
from pathlib import Path


TESTS = Path(__file__).resolve().parent
WEIGHTS = "minipss.weights"  # the name `python -m minipss.weights` is run by


class _Parsed(Exception):
    """Raised in place of parsing: carries the parser the command built."""


def built_parser(main) -> argparse.ArgumentParser:
    """The parser `main` builds, taken at the moment it would parse (the commands build theirs inline)."""
    def grab(self, *args, **kwargs):
        raise _Parsed(self)

    real = argparse.ArgumentParser.parse_args
    argparse.ArgumentParser.parse_args = grab
    try:
        main([])
    except _Parsed as got:
        return got.args[0]
    finally:
        argparse.ArgumentParser.parse_args = real
    raise AssertionError(f"{main.__module__}.main parsed no arguments")


def options_of(parser: argparse.ArgumentParser) -> set[str]:
    return {o for action in parser._actions for o in action.option_strings if o not in ("-h", "--help")}


def command_options() -> dict[str, set[str]]:
    """{command: its options}: every subcommand of `minipss` (subparsers walked), and `minipss.weights`."""
    from minipss.cli import main as cli_main
    from minipss.weights.real_models import main as weights_main

    top = built_parser(cli_main)
    found = {}
    for action in top._actions:
        if isinstance(action, argparse._SubParsersAction):
            found.update({name: options_of(sub) for name, sub in action.choices.items()})
    assert options_of(top) == set(), "minipss itself takes no option besides --help"
    found[WEIGHTS] = options_of(built_parser(weights_main))
    return found


def strings_in(tree) -> tuple[set[str], set[str]]:
    """(strings used as elements of a list/tuple or as call arguments, every string constant)."""
    elements, constants = set(), set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            constants.add(node.value)
        items = (node.elts if isinstance(node, (ast.List, ast.Tuple)) else
                 node.args + [k.value for k in node.keywords] if isinstance(node, ast.Call) else [])
        elements.update(i.value for i in items if isinstance(i, ast.Constant) and isinstance(i.value, str))
    return elements, constants


def untested(commands: dict[str, set[str]], sources: dict[str, str]) -> list[str]:
    """`command option` for each option no file that runs the command mentions (see the module's docstring)."""
    mentioned = {name: set() for name in commands}
    for text in sources.values():
        elements, constants = strings_in(ast.parse(text))
        said = constants | {c.split("=", 1)[0] for c in constants if c.startswith("--")}
        for name, options in commands.items():
            if name in elements:
                mentioned[name] |= options & said
    return sorted(f"{name} {o}" for name, options in commands.items() for o in options - mentioned[name])


def test_the_parsers_are_read_whole():
    """The walk finds every command and the options that distinguish them (a check on the walk itself)."""
    commands = command_options()
    assert set(commands) == {"pss", "sweep", "quickstart", "compare", "study", "train", "experiment", "perf", "synth",
                             "pretrain", "study-synth", WEIGHTS}
    assert {"--control", "--locator", "--token-rule"} <= commands["pss"]
    assert "--control" not in commands["sweep"] and "--locator" in commands["sweep"]
    assert {"--accum", "--pv-rank", "--pv-first-layer"} <= commands["train"]
    assert commands[WEIGHTS] == {"--out", "--list"} and commands["compare"] == {"--plots"}


def test_the_rule_finds_a_missing_option_and_ignores_keys_and_patterns():
    commands = {"pss": {"--seed", "--locator"}, "train": {"--accum"}}
    sources = {"a.py": 'main(["pss", "--seed", "1"])\nr = result["train"]\nmatch = r"--accum 0: must be"\n'
                       'flag = "--locator=zscore"'}
    assert untested(commands, sources) == ["train --accum"]
    assert untested(commands, {"b.py": 'x = {"pss": 1}; y = ["--seed", "--locator"]'}) == ["pss --locator",
                                                                                          "pss --seed", "train --accum"]


def test_every_option_of_every_command_is_run_by_a_test():
    sources = {p.name: p.read_text() for p in sorted(TESTS.glob("*.py"))}
    missing = untested(command_options(), sources)
    assert not missing, "options no test runs through the command line: " + ", ".join(missing)
