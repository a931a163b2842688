"""The tforge command line: info, the verbs' --help (documented defaults), errors."""
import argparse
import importlib
import json
import subprocess
import sys

import pytest

from tforge import cli
from tforge.commands import config as cfglib


def test_info_json(capsys):
    assert cli.main(["info", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["native_loaded"] is True
    assert info["cpu"]["kernel_isa"] in ("avx2", "scalar")
    assert set(info["backends"]) >= {"cpu", "cuda", "triton", "torch"}


def test_info_console_script_runs():
    out = subprocess.run([sys.executable, "-m", "tforge.cli", "info"], capture_output=True, text=True, check=True)
    assert "CPU kernels" in out.stdout and "backends:" in out.stdout


def test_unknown_command_fails_cleanly():
    res = subprocess.run([sys.executable, "-m", "tforge.cli", "frobnicate"], capture_output=True, text=True)
    assert res.returncode == 2 and "invalid choice" in res.stderr


VERBS = ("pretrain", "finetune", "evaluate", "predict", "compress", "demo", "bench", "info")


def test_top_level_help_lists_every_verb(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for verb in VERBS:
        assert verb in out


CONFIG_VERBS = ("pretrain", "finetune", "evaluate", "predict", "compress", "demo")


@pytest.mark.parametrize("verb", CONFIG_VERBS)
def test_config_verb_help_documents_defaults(verb, capsys):
    import tomllib
    with pytest.raises(SystemExit) as exc:
        cli.main([verb, "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for flag in ("--config", "--set", "--print-config"):
        assert flag in out
    module = importlib.import_module(f"tforge.commands.{verb}")
    defaults = cfglib.to_dict(module.CONFIG())
    assert ("--out DIR" in out) == ("out" in defaults.get("run", {}))
    # the epilog is the embedded config as TOML, and it parses back to the defaults
    toml_text = out[out.index("defaults (override"):].split("\n", 2)[2]
    parsed = tomllib.loads(toml_text)
    expected = {s: {k: v for k, v in body.items() if v is not None} for s, body in defaults.items()}
    assert parsed == expected


def _help_options(verb: str) -> list:
    """(flags, help, dest, takes a value) of every option of a verb's parser."""
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return [(a.option_strings, a.help, a.dest, a.nargs != 0) for a in sub.choices[verb]._actions
            if a.option_strings]


@pytest.mark.parametrize("verb", CONFIG_VERBS)
def test_every_option_has_help_and_shows_its_default(verb, capsys):
    module = importlib.import_module(f"tforge.commands.{verb}")
    settings = {s.key: s for s in cfglib.settings(module.CONFIG)}
    options = _help_options(verb)
    for flags, text, dest, takes_value in options:
        if text == argparse.SUPPRESS:
            continue  # hidden test-only flags (demo --tiny)
        assert text and len(text) > 10, flags
        if takes_value:
            assert "default: " in text, (flags, text)
        if dest in settings:  # a setting's flag: its description, key and real default
            s = settings[dest]
            assert s.help and text.startswith(s.help), flags
            shown = "unset" if s.default is None else cfglib.toml_value(s.default)
            assert f"[{s.key}" in text and f"default: {shown}]" in text, (flags, text)
    assert {s.key for s in settings.values() if s.flag} <= {dest for _, _, dest, _ in options}
    with pytest.raises(SystemExit):
        cli.main([verb, "--help"])
    out = capsys.readouterr().out
    assert "SHORTCUT" not in out.upper()  # no internal placeholders
    # flags that take a value show a metavar or their choices, never one argparse made from the dest
    usage = out[:out.index("\n\n")]
    for flags, _, dest, _ in options:
        assert dest.upper() not in usage, (flags, usage)


def test_every_setting_has_help():
    for verb in CONFIG_VERBS:
        module = importlib.import_module(f"tforge.commands.{verb}")
        for s in cfglib.settings(module.CONFIG):
            assert s.help.strip(), f"{verb}: {s.key} has no help text"


def test_defaults_satisfy_their_own_constraints():
    for verb in CONFIG_VERBS:
        config_cls = importlib.import_module(f"tforge.commands.{verb}").CONFIG
        cfg = config_cls()
        for s in cfglib.settings(config_cls):
            assert cfglib.coerce(s, getattr(getattr(cfg, s.section), s.name), "defaults") == s.default or \
                s.default is None


def test_resumable_verbs_take_resume(capsys):
    for verb, has_resume in (("pretrain", True), ("finetune", True), ("evaluate", False)):
        with pytest.raises(SystemExit):
            cli.main([verb, "--help"])
        assert ("--resume" in capsys.readouterr().out) == has_resume


def test_bench_help(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["bench", "--help"])
    assert exc.value.code == 0 and "benchmarks/" in capsys.readouterr().out
