"""Faults: `hnrnn train` killed with SIGKILL mid-epoch, then `--resume`d, ends bitwise where an
uninterrupted run of the same seed ends; a save killed or failing half-way leaves the previous
checkpoint intact."""
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from hnrnn.learner import PAUSE_ENV, _atomic_save

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""), OMP_NUM_THREADS="1")
ENV.pop("WORLD_SIZE", None)
ENV.pop(PAUSE_ENV, None)


def _train_cmd(out, *extra):
    return [sys.executable, "-m", "hnrnn", "train", "--model", "Model3", "--device", "cpu", "--epochs", "3",
            "--deterministic", "--out", str(out), *extra]


def _run(cmd):
    p = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    return p.stdout


def _assert_bitwise(a, b, where):
    if isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            _assert_bitwise(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_bitwise(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


def test_sigkill_mid_epoch_then_resume_gives_the_uninterrupted_weights(tmp_path):
    _run(_train_cmd(tmp_path / "straight"))
    straight = torch.load(tmp_path / "straight" / "Model3.pt", weights_only=True)

    # Paused before batch 17 of epoch 1 (epoch 0's checkpoint written), then SIGKILLed there.
    out, marker = tmp_path / "killed", tmp_path / "paused"
    p = subprocess.Popen(_train_cmd(out), env=dict(ENV, **{PAUSE_ENV: f"1:17:{marker}"}),
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 240
        while not marker.exists() and p.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert marker.exists(), f"training never reached the pause point: {p.communicate()[1]}"
    finally:
        p.send_signal(signal.SIGKILL)
        p.wait()
    assert p.returncode == -signal.SIGKILL
    ck = torch.load(out / "Model3.pt", weights_only=True)
    assert ck["epoch"] == 1 and len(ck["history"]["epochs"]) == 1
    assert not any(f.name.startswith("Model3.pt.tmp") for f in out.iterdir())

    stdout = _run(_train_cmd(out, "--resume"))
    resumed = torch.load(out / "Model3.pt", weights_only=True)
    assert stdout.count("train_loss") == 1  # one table: epoch 0 from the checkpoint, then 1 and 2
    assert resumed["epoch"] == straight["epoch"] == 3
    for part in ("model", "optimizer", "scheduler", "smooth"):
        _assert_bitwise(resumed[part], straight[part], part)
    drop_time = [{k: v for k, v in r.items() if k != "seconds"} for r in straight["history"]["epochs"]]
    assert [{k: v for k, v in r.items() if k != "seconds"} for r in resumed["history"]["epochs"]] == drop_time
    assert resumed["history"]["batch_losses"] == straight["history"]["batch_losses"]


def test_sigkill_during_a_save_keeps_the_previous_checkpoint(tmp_path):
    path = tmp_path / "k.pt"
    _atomic_save({"w": torch.arange(5.0)}, str(path))
    before = path.read_bytes()
    # The new checkpoint's pickling kills its own process half-way through the save.
    script = ("import os, signal, sys, torch\n"
              "from hnrnn.learner import _atomic_save\n"
              "class Die:\n"
              "    def __reduce__(self):\n"
              "        os.kill(os.getpid(), signal.SIGKILL)\n"
              "_atomic_save({'w': torch.zeros(100000), 'die': Die()}, sys.argv[1])\n")
    p = subprocess.run([sys.executable, "-c", script, str(path)], env=ENV, capture_output=True, timeout=120)
    assert p.returncode == -signal.SIGKILL
    assert path.read_bytes() == before
    assert torch.equal(torch.load(path, weights_only=True)["w"], torch.arange(5.0))


def test_a_failing_save_leaves_the_previous_checkpoint_and_no_temporary_file(tmp_path):
    path = tmp_path / "k.pt"
    _atomic_save({"w": torch.arange(5.0)}, str(path))
    before = path.read_bytes()

    class Unpicklable:
        def __reduce__(self):
            raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        _atomic_save({"w": torch.zeros(100000), "bad": Unpicklable()}, str(path))
    assert path.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["k.pt"]
