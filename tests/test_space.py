import numpy as np
import pytest

from neuro_opt.datasets import array_space
from neuro_opt.space import SearchSpace


def test_nhp_array_has_96_points_and_masked_corners():
    s = array_space("nhp")
    assert s.grid_shape == (10, 10) and s.n_points == 96
    for corner in [(0, 0), (0, 9), (9, 0), (9, 9)]:
        with pytest.raises(ValueError, match="masked"):
            s.point_of_index(corner)
    p = s.point_of_index((0, 1))
    assert s.values_of(p) == {"x": 1, "y": 2}
    assert s.X[p].tolist() == [0.0, 1.0]


def test_line_skips_masked_points_and_contains_the_point():
    s = array_space("nhp")
    p = s.point_of_index((0, 5))
    line = s.line(p, 1)  # along y at x index 0: 10 values minus 2 corners
    assert len(line) == 8 and p in line
    assert all(s.index[q][0] == 0 for q in line)
    assert len(s.line(s.point_of_index((4, 4)), 0)) == 10


def test_to_grid_round_trip_with_nan_at_mask():
    s = array_space("nhp")
    v = np.arange(s.n_points, dtype=float)
    g = s.to_grid(v)
    assert np.isnan(g[0, 0]) and g[0, 1] == 0.0
    assert np.array_equal(g[tuple(s.index.T)], v)


@pytest.mark.parametrize("dims,mask,msg", [
    ({}, None, "at least one"),
    ({"a": []}, None, "no values"),
    ({"a": [1, 2]}, np.ones(3, bool), "mask has shape"),
    ({"a": [1, 2]}, np.zeros(2, bool), "excludes every point"),
])
def test_bad_spaces_raise_clear_errors(dims, mask, msg):
    with pytest.raises(ValueError, match=msg):
        SearchSpace(dims, mask)
