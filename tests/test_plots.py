"""PNG figures: smoothing against a hand computation, and real PNG files from rows and eval metrics."""

import pytest

from tarpo.plots import eval_figure, moving_average, save_png, train_figure


def test_moving_average_matches_hand_computation():
    values = [0.0, 1.0, 0.0, 1.0, 1.0, 1.0]
    expected = [0.0, 0.5, 1 / 3, 0.5, 0.75, 0.75]   # window 4: means of the last <= 4 values
    assert moving_average(values, window=4) == pytest.approx(expected)
    assert moving_average(values, window=1) == values
    with pytest.raises(ValueError):
        moving_average(values, window=0)


def test_train_and_eval_figures_write_png(tmp_path):
    rows = [{"step": s, "reward_mean": s / 10, "soft_ratio": 0.01 * s, "completion_length": 20.0,
             "explicit_length": 19.0, "kl_token": 0.001 * s, "kl_router": 0.0,
             **({"eval_avg_at_k": 0.3 + s / 100} if s % 2 == 0 else {})} for s in range(1, 7)]
    train_png = save_png(train_figure(rows), tmp_path / "train.png")
    metrics = {"warmup/avg_at_k": 0.4, "warmup/avg_at_k_stderr": 0.03, "tarpo/avg_at_k": 0.45,
               "warmup/greedy_accuracy": 0.4, "tarpo/greedy_accuracy": 0.5}
    eval_png = save_png(eval_figure(metrics, ["warmup", "tarpo"], ["avg_at_k", "greedy_accuracy"]),
                        tmp_path / "sub" / "eval.png")
    for path in (train_png, eval_png):
        data = path.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
        assert oct(path.stat().st_mode & 0o777) == "0o644"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []   # no temp files left


def test_train_figure_shows_entropies_when_there_is_no_kl():
    """train.beta 0 (the tiny recipe) computes no KL: the last panel plots the entropies instead of empty axes."""
    rows = [{"step": s, "reward_mean": 0.1, "soft_ratio": 0.01, "completion_length": 20.0, "explicit_length": 19.0,
             "kl_token": "", "kl_router": "", "token_entropy": 0.2 - s / 100, "router_entropy": 0.05} for s in range(1, 5)]
    panel = train_figure(rows).axes[3]
    assert [line.get_label() for line in panel.get_lines()] == ["token entropy", "router entropy"]
    assert list(panel.get_lines()[0].get_ydata()) == pytest.approx([0.19, 0.18, 0.17, 0.16])
    rows[0]["kl_token"] = 0.5
    assert [line.get_label() for line in train_figure(rows).axes[3].get_lines()] == ["token KL"]


def test_train_figure_adds_the_filtered_share_only_with_dynamic_sampling():
    rows = [{"step": s, "reward_mean": 0.1, "soft_ratio": 0.01 * s, "completion_length": 20.0} for s in range(1, 4)]
    assert len(train_figure(rows).axes[1].get_lines()) == 1
    for row, share in zip(rows, (0.5, 0.25, 0.0)):
        row["dynamic_filtered_share"] = share
    lines = train_figure(rows).axes[1].get_lines()
    assert [line.get_label() for line in lines] == ["soft-step ratio", "groups filtered (dynamic sampling)"]
    assert list(lines[1].get_ydata()) == [0.5, 0.25, 0.0]
