"""The tforge command line: info, the verbs' --help (documented defaults), errors."""
import importlib
import json
import subprocess
import sys

import pytest

from tforge import cli


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


@pytest.mark.parametrize("verb", ["pretrain", "finetune", "evaluate", "predict", "compress", "demo"])
def test_config_verb_help_documents_defaults(verb, capsys):
    import tomllib
    with pytest.raises(SystemExit) as exc:
        cli.main([verb, "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for flag in ("--config", "--set", "--print-config"):
        assert flag in out
    module = importlib.import_module(f"tforge.commands.{verb}")
    assert ("--out DIR" in out) == ("out" in module.DEFAULTS.get("run", {}))
    # the epilog is the embedded config as TOML, and it parses back to the defaults
    toml_text = out[out.index("defaults (override"):].split("\n", 2)[2]
    parsed = tomllib.loads(toml_text)
    expected = {s: {k: v for k, v in body.items() if v is not None} for s, body in module.DEFAULTS.items()}
    assert parsed == expected


def test_resumable_verbs_take_resume(capsys):
    for verb, has_resume in (("pretrain", True), ("finetune", True), ("evaluate", False)):
        with pytest.raises(SystemExit):
            cli.main([verb, "--help"])
        assert ("--resume" in capsys.readouterr().out) == has_resume


def test_bench_help(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["bench", "--help"])
    assert exc.value.code == 0 and "benchmarks/" in capsys.readouterr().out
