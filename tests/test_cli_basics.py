"""The command line explains itself: every option has help text that shows its default, `dmae --help` loads neither
torch nor transformers, and an error is one line (exit 2) unless `--debug` asks for the traceback."""

import argparse
import os
import subprocess
import sys

import pytest
from conftest import REPO_ROOT

from dmae_hf import defaults
from dmae_hf.cli import build_parser, main
from dmae_hf.hub.convert import CheckpointError


def subcommands():
    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return parser, action.choices


def env():
    return {**os.environ, "PYTHONPATH": str(REPO_ROOT), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


def test_every_option_has_help_and_shows_its_default():
    parser, commands = subcommands()
    assert {"analyze", "certify", "convert", "demo", "predict"} <= set(commands)
    for name, sub in [("dmae", parser), *commands.items()]:
        text = sub.format_help()
        for action in sub._actions:
            if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
                continue
            assert action.help, f"{name} {action.option_strings or action.dest}: no help text"
            flag = isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction))
            if action.option_strings and action.default is not None and not flag:
                helped = sub._get_formatter()._format_action(action)
                assert "(default:" in helped, f"{name} {action.option_strings[0]}: default not shown\n{helped}"
        assert "(default:" in text or name == "dmae"


def test_certification_defaults_are_shared():
    _, commands = subcommands()
    for name in ("certify", "predict", "demo"):
        values = {a.dest: a.default for a in commands[name]._actions}
        assert (values["n0"], values["alpha"], values["batch"]) == (defaults.N0, defaults.ALPHA, defaults.NOISE_BATCH)
        assert values["n"] == (defaults.DEMO_N if name == "demo" else defaults.N), name
    assert str(defaults.DEMO_N) in commands["demo"].description and str(defaults.N) in commands["demo"].description


def test_help_imports_neither_torch_nor_transformers():
    code = ("import sys; sys.argv = ['dmae', '--help']; import dmae_cli\n"
            "try:\n    dmae_cli.main()\nexcept SystemExit:\n    pass\n"
            "heavy = sorted(m for m in ('torch', 'transformers', 'datasets', 'PIL') if m in sys.modules)\n"
            "print('HEAVY', heavy)")
    result = subprocess.run([sys.executable, "-c", code], env=env(), capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "usage: dmae" in result.stdout and "HEAVY []" in result.stdout, result.stdout[-500:]


def test_the_launcher_registers_before_a_command_runs(tmp_path):
    """Deferred registration must not leak: a command that loads a model by short name through transformers works."""
    out = tmp_path / "log.tsv"
    code = ("import sys; sys.argv = ['dmae'] + sys.argv[1:]; import dmae_cli; sys.exit(dmae_cli.main())")
    result = subprocess.run([sys.executable, "-c", code, "analyze", str(out)], env=env(), capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert "DMAE_HF_DEFER_REGISTRATION" not in os.environ


def test_an_error_is_one_line_and_debug_shows_the_traceback(tmp_path, capsys):
    missing = tmp_path / "no-such-log.tsv"
    assert main(["analyze", str(missing)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no-such-log.tsv" in err and "Traceback" not in err
    bad = tmp_path / "bad.tsv"
    bad.write_text("not a log\n")
    assert main(["convert", str(bad), str(tmp_path / "out")]) == 2  # any exception: one line, never a traceback
    err = capsys.readouterr().err
    assert err.startswith("dmae convert: error: ") and err.count("\n") == 1 and "Traceback" not in err
    with pytest.raises(CheckpointError, match="is not a DMAE/MAE checkpoint"):
        main(["--debug", "convert", str(bad), str(tmp_path / "out")])


def test_console_script_module_is_installed_with_the_package():
    setup = (REPO_ROOT / "setup.py").read_text()
    assert '"dmae=dmae_cli:main"' in setup and 'py_modules=["dmae_cli"]' in setup


def test_certification_methods_come_from_one_table():
    from dmae_hf.pipeline_dmae import CERTIFY_PARAMETERS

    _, commands = subcommands()
    method = next(a for a in commands["certify"]._actions if a.dest == "method")
    assert list(method.choices) == list(defaults.METHODS) == ["cohen", "adaptive", "sequential"]
    assert {option for options in defaults.METHODS.values() for option in options} <= set(CERTIFY_PARAMETERS)
    dests = {a.dest for a in commands["certify"]._actions}
    assert {option for options in defaults.METHODS.values() for option in options} <= dests  # each has its flag
    for name, options in defaults.METHODS.items():  # the core accepts exactly the table's options per method
        flags = {o for o in ("first_look", "target_radius", "estimate_tolerance") if o not in options}
        if flags:
            import torch

            from dmae_hf.smoothing import certify

            with pytest.raises(ValueError, match=f"method={name!r} takes"):
                certify(lambda b: torch.zeros(len(b), 2), torch.rand(3, 4, 4), 0.25, n0=5, n=10, method=name,
                        **dict.fromkeys(flags, 1))
