"""The `hnrnn` command line."""
import json
import subprocess
import sys

import pytest

from hnrnn.cli import main, seconds_to_reach
from hnrnn.learner import EpochRecord, History


def test_data_walkthrough(capsys):
    assert main(["data"]) == 0
    out = capsys.readouterr().out
    assert "train tokens: 50079   valid tokens: 13017" in out
    assert "len(valid_dl) = 3" in out and "= 13440" in out
    assert "0  thousand forty seven , eight thousand forty eight" in out
    assert "4  two , eight" in out


def test_train_one_model_with_checkpoint_plot_and_resume(tmp_path, capsys):
    args = ["train", "--model", "Model1", "--backend", "eager", "--epochs", "1", "--device", "cpu",
            "--out", str(tmp_path), "--json", str(tmp_path / "h.json")]
    assert main(args) == 0
    assert (tmp_path / "Model1.pt").exists()
    first = json.loads((tmp_path / "h.json").read_text())["epochs"]
    assert len(first) == 1
    # Resuming a finished run trains nothing more and reports the same table.
    assert main(args + ["--resume"]) == 0
    assert json.loads((tmp_path / "h.json").read_text())["epochs"] == first


def test_train_on_a_text_file(tmp_path):
    f = tmp_path / "t.txt"
    f.write_text("\n".join(f"the cat {w}" for w in ["sat", "ran", "sat", "ate"] * 40))
    assert main(["train", "--model", "Model3", "--backend", "eager", "--epochs", "1", "--bs", "4",
                 "--bptt", "5", "--text", str(f), "--out", str(tmp_path)]) == 0


def test_resume_without_a_checkpoint_is_one_clear_line(tmp_path, capsys):
    assert main(["train", "--model", "Model1", "--resume", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("hnrnn train: error: cannot resume: checkpoint ")
    assert "Model1.pt does not exist" in err and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []


def test_only_train_runs_under_torchrun(monkeypatch, capsys):
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main(["zoo", "--models", "Model0"]) == 2
    assert "only `hnrnn train` runs under torchrun" in capsys.readouterr().err


def test_zoo_table_and_json(tmp_path, capsys):
    out_json = tmp_path / "zoo.json"
    assert main(["zoo", "--backend", "eager", "--seeds", "1", "--models", "Model0", "--device", "cpu",
                 "--json", str(out_json)]) == 0
    out = capsys.readouterr().out
    assert "| Model0 | 0.3539 / 0.4676 |" in out
    result = json.loads(out_json.read_text())
    assert result["rows"][0]["model"] == "Model0" and result["rows"][0]["backend"] == "eager"
    assert {"device", "torch", "commit"} <= set(result["environment"])


def test_zoo_json_keeps_the_models_finished_before_a_stop(tmp_path, monkeypatch):
    """The JSON is rewritten after every model: a zoo run cut short (gpu_check.sh's time box)
    keeps the rows it finished."""
    import hnrnn.cli as cli

    def fake_train(name, data, **kw):
        if name == "Model1":
            raise RuntimeError("stopped")
        return History("accuracy", [EpochRecord(0, 1.0, 1.0, 0.5, 0.25)]), 0.25

    monkeypatch.setattr(cli, "train_model", fake_train)
    out_json = tmp_path / "zoo.json"
    with pytest.raises(RuntimeError, match="stopped"):
        main(["zoo", "--backend", "eager", "--seeds", "1", "--models", "Model0", "Model1", "Model2",
              "--device", "cpu", "--json", str(out_json)])
    rows = json.loads(out_json.read_text())["rows"]
    assert [r["model"] for r in rows] == ["Model0"] and rows[0]["accuracy"] == 0.5
    assert [p.name for p in tmp_path.iterdir()] == ["zoo.json"]  # no temporary file left


def test_console_script_and_module_entry_point():
    r = subprocess.run([sys.executable, "-m", "hnrnn", "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "zoo" in r.stdout and "train" in r.stdout


def test_seconds_to_reach_sums_epochs_up_to_the_first_that_reaches_the_target():
    h = History("accuracy", [EpochRecord(i, 1.0, 1.0, m, s) for i, (m, s) in
                             enumerate([(0.2, 1.5), (0.5, 2.0), (0.4, 4.0), (0.6, 8.0)])])
    assert seconds_to_reach(h, 0.5) == 3.5  # reached exactly at epoch 1: 1.5 + 2.0
    assert seconds_to_reach(h, 0.55) == 15.5  # a later dip (epoch 2) does not count as reaching it
    assert seconds_to_reach(h, 0.1) == 1.5
    assert seconds_to_reach(h, 0.7) is None
    assert seconds_to_reach(History("accuracy"), 0.1) is None
