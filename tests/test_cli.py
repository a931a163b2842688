"""The tforge command line."""
import json
import subprocess
import sys

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
