import json

from tests.conftest import cli


def test_quickstart_runs_the_whole_path(tmp_path):
    proc = cli("quickstart", "--workdir", tmp_path / "qs", "--epochs", "4", "--eps", "0.1")
    assert proc.returncode == 0, proc.stderr
    assert "PASSED ort-cpu vs torch" in proc.stdout and "3/3" in proc.stdout
    result = json.loads((tmp_path / "qs" / "results" / "cnn-digits-pgd.json").read_text())
    assert result["complete"] and [r["runtime"] for r in result["runtimes"]] == ["torch", "ort-cpu"]
    assert (tmp_path / "qs" / "export" / "cnn-digits" / "manifest.json").is_file()
    # a second run replaces the quickstart's own outputs instead of failing
    assert cli("quickstart", "--workdir", tmp_path / "qs", "--epochs", "1", "--eps", "0.1").returncode == 0
