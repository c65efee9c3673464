"""benchmarks/budget_table.py: which checkpoint a run had saved within each budget of minutes."""

import pytest

LOG = """\
[12/31 23:50:00] d2.checkpoint.detection_checkpoint INFO: Loading from efficientnet-lite://lite0
[12/31 23:50:10] d2.engine.train_loop INFO: Starting training from iteration 0
[12/31 23:55:10] fvcore.common.checkpoint INFO: Saving checkpoint to /r/model_0000099.pth
[12/31 23:59:40] fvcore.common.checkpoint INFO: Saving checkpoint to /r/model_best.pth
[01/01 00:00:10] fvcore.common.checkpoint INFO: Saving checkpoint to /r/model_0000199.pth
[01/01 00:01:10] d2.utils.events INFO:  eta: 0:10:00  iter: 219  total_loss: 1.2
[01/01 03:00:00] d2.engine.train_loop INFO: Starting training from iteration 200
[01/01 03:04:00] fvcore.common.checkpoint INFO: Saving checkpoint to /r/model_0000299.pth
[01/01 03:05:00] fvcore.common.checkpoint INFO: Saving checkpoint to /r/model_final.pth
"""


@pytest.fixture
def budget(load_tool):
    return load_tool("budget_table", folder="benchmarks")


def test_minutes_count_training_across_a_new_year_and_not_the_pause(budget):
    saved = budget.checkpoint_minutes(LOG)
    assert [path for _, path in saved] == [
        "/r/model_0000099.pth", "/r/model_best.pth", "/r/model_0000199.pth",
        "/r/model_0000299.pth", "/r/model_final.pth",
    ]  # fmt: skip
    # 11 minutes before the stop (to its last line at 00:01:10), then 4 and 5 after the resume.
    assert [round(at, 2) for at, _ in saved] == [5.0, 9.5, 10.0, 15.0, 16.0]


def test_the_last_periodic_checkpoint_within_the_budget_is_chosen(budget):
    saved = budget.checkpoint_minutes(LOG)
    assert budget.within_budget(saved, 9.9) == (5.0, "/r/model_0000099.pth")  # not model_best
    assert budget.within_budget(saved, 15.5)[1] == "/r/model_0000299.pth"
    assert budget.within_budget(saved, 60)[1] == "/r/model_final.pth"
    assert budget.within_budget(saved, 4) is None


def test_a_folder_without_a_log_is_named(budget, tmp_path, capsys):
    assert budget.main([str(tmp_path), "--minutes", "30"]) == 1
    assert f"{tmp_path / 'log.txt'} does not exist" in capsys.readouterr().err


@pytest.mark.slow
def test_a_failed_evaluation_is_named(budget, tmp_path, capsys):
    (tmp_path / "log.txt").write_text(LOG.replace("/r/", f"{tmp_path}/"))
    (tmp_path / "config.yaml").write_text("MODEL:\n  NOT_A_KEY: 1\n")
    assert budget.main([str(tmp_path), "--minutes", "60"]) == 1
    assert f"evaluating {tmp_path}/model_final.pth failed" in capsys.readouterr().err
