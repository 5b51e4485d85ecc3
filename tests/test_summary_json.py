"""summary.json is strict JSON: numbers a run could not compute are null, not NaN."""

import json
import math

import numpy as np
import pytest

from sweeps.store import write_summary


def _strict_loads(text: str):
    def refuse(token):
        raise ValueError(f"non-standard JSON constant {token}")
    return json.loads(text, parse_constant=refuse)


def test_write_summary_turns_non_finite_numbers_into_null_and_numpy_into_plain_values(tmp_path):
    summary = {"a": float("nan"), "b": np.float64(np.inf), "c": [np.float32(1.5), -math.inf],
               "d": np.array([1.0, np.nan]), "e": {"n": np.int64(3), "ok": True, "name": "gpbo"}}
    path = write_summary(tmp_path / "summary.json", summary)
    assert _strict_loads(path.read_text()) == {"a": None, "b": None, "c": [1.5, None], "d": [1.0, None],
                                               "e": {"n": 3, "ok": True, "name": "gpbo"}}
    assert math.isnan(summary["a"])  # the caller's dict is not modified


def test_write_summary_raises_on_unknown_objects_unless_given_a_default(tmp_path):
    with pytest.raises(TypeError):
        write_summary(tmp_path / "s.json", {"p": tmp_path})
    assert _strict_loads(write_summary(tmp_path / "s.json", {"p": tmp_path}, default=str).read_text()) == \
        {"p": str(tmp_path)}
