import numpy as np
import pytest

from neuro_opt import metrics


def test_final_and_auc():
    c = np.array([[0.0, 0.5, 1.0], [0.2, 0.2, 0.2]])
    assert metrics.final(c).tolist() == [1.0, 0.2]
    assert np.allclose(metrics.auc(c), [0.5, 0.2])


def test_performance_points_are_absolute_differences_on_0_100():
    a = np.array([[0.783, 0.783]])
    b = np.array([[0.612, 0.612]])
    assert np.allclose(metrics.performance_points(a, b), [17.1, 17.1])


def test_queries_to_convergence_needs_five_in_a_row():
    pts = np.array([
        [1, 2, 3, 3, 3, 3, 3, 4],   # 3 from query 3 to 7 -> converged at query 7
        [1, 1, 1, 1, 2, 1, 1, 1],   # never 5 in a row
        [5, 5, 5, 5, 5, 6, 6, 6],   # converged at query 5
    ])
    out = metrics.queries_to_convergence(pts)
    assert out[0] == 7 and np.isnan(out[1]) and out[2] == 5


def test_mean_sem():
    m, s = metrics.mean_sem(np.array([1.0, 2.0, 3.0, 4.0]))
    assert m == 2.5 and s == pytest.approx(np.std([1, 2, 3, 4], ddof=1) / 2)


def test_wilcoxon_one_sided_direction():
    rng = np.random.default_rng(0)
    b = rng.random(20)
    a = b + 0.1 + 0.01 * rng.random(20)
    assert metrics.wilcoxon_greater(a, b) < 1e-4
    assert metrics.wilcoxon_greater(b, a) > 0.99
    assert metrics.wilcoxon_greater(b, b) == 1.0


def test_queries_to_reach():
    c = np.array([[0.1, 0.5, 0.9], [0.3, 0.7, 0.9]])
    assert metrics.queries_to_reach(c, 0.6) == 2
    assert np.isnan(metrics.queries_to_reach(c, 0.95))
