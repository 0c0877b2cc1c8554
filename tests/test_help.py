"""Help in plain words: plain metavars, and the library default of every option a command leaves unset."""

from __future__ import annotations

import pytest
import typer

from robustdeploy.cli import app, plain_help


@pytest.fixture()
def _help(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "160")

    def shown(*command: str) -> str:
        plain_help(typer.main.get_command(app), show_defaults=True).main([*command, "--help"], standalone_mode=False)
        return capsys.readouterr().out
    return shown


def test_help_shows_plain_metavars_and_defaults(_help) -> None:
    text = _help("evaluate")
    assert "<list[" not in text and "<bool>" not in text and "<int>" not in text
    assert "INTEGER" in text and "FLOAT" in text and "BUNDLE" in text
    for default in ("[default: (torch, ort-cpu)]", "[default: (pgd)]", "[default: (0.1)]", "[default: (256)]"):
        assert default in text, default
    assert "--threads" in _help("compare") and "PyTorch" in _help("bench")
    assert "One page over result files: a verdict per deployment" in " ".join(_help().split())
