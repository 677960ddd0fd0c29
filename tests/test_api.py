"""The notebook API: `from autofednlp import load_config, run_experiment`."""

import pytest
from small_run import small_overrides


def test_run_experiment_returns_results_with_a_frame_of_rounds(tiny_model_dir, tmp_path):
    import pandas as pd

    from autofednlp import ConfigError, load_config, load_results, resume_experiment
    from autofednlp import run_experiment as run

    cfg = load_config(None, small_overrides(tiny_model_dir))
    result = run(cfg, tmp_path / "r", progress="quiet", overrides={"tune.width": 8, "seed": 1})
    assert result.finished and result.config.seed == 1 and result.config.tune.width == 8
    assert isinstance(result.rounds, pd.DataFrame)
    assert list(result.rounds["round"]) == [1, 2]
    assert result.best_val_accuracy == result.rounds["val_accuracy"].max()
    assert 0 < result.majority_val_accuracy < 1 and result.test_accuracy is not None
    assert "finished" in repr(result)

    again = load_results(tmp_path / "r")
    assert again.summary == result.summary and again.config == result.config

    longer = resume_experiment(tmp_path / "r", rounds=3, progress="quiet")
    assert list(longer.rounds["round"]) == [1, 2, 3] and longer.summary["extended"]

    with pytest.raises(ConfigError, match="tune.depth = 9: the model has only 2 layers"):
        run(cfg, tmp_path / "bad", progress="quiet", overrides=["tune.depth=9"])
    assert not (tmp_path / "bad").exists()


def test_importing_the_package_stays_light():
    import subprocess
    import sys

    code = "import autofednlp, sys; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_keyboard_interrupt_in_a_notebook_leaves_a_resumable_unlocked_run(
    tiny_model_dir, tmp_path, monkeypatch
):
    from autofednlp import load_config, resume_experiment, run_experiment
    from autofednlp.server.loop import FederatedRun

    real = FederatedRun.record

    def interrupted(self, row):
        real(self, row)
        if row["round"] == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(FederatedRun, "record", interrupted)
    cfg = load_config(None, [*small_overrides(tiny_model_dir), "federation.rounds=3"])
    with pytest.raises(KeyboardInterrupt):
        run_experiment(cfg, tmp_path / "r", progress="quiet")
    monkeypatch.setattr(FederatedRun, "record", real)
    result = resume_experiment(tmp_path / "r", progress="quiet")  # the lock was released
    assert result.finished and list(result.rounds["round"]) == [1, 2, 3]
