"""TBFM and its baselines on a torch device: data, parameters and forecasts together; a clear error for one not here.

Every test runs on the CPU; the ``cuda`` cases run where torch sees a GPU.
"""

import numpy as np
import pytest
import torch

from neuro_opt.tbfm import cells
from neuro_opt.tbfm.base import available_devices, resolve_device
from neuro_opt.tbfm.baselines import AELSTM, LSSM, fit_baseline
from neuro_opt.tbfm.compile import compile_tbfm
from neuro_opt.tbfm.data import from_session, time_ordered_split
from neuro_opt.tbfm.fsam import fit_fsam
from neuro_opt.tbfm.metrics import r2_horizon
from neuro_opt.tbfm.model import TBFM, fit_tbfm
from neuro_opt.tbfm.simulator import simulate_session

torch.set_num_threads(1)

DEVICES = [
    "cpu",
    pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="torch sees no CUDA GPU here")),
]
H = 60


@pytest.fixture(scope="module")
def split():
    s = simulate_session(n_trials=500, n_channels=8, ipi_ms=30, seed=3)
    return time_ordered_split(from_session(s, horizon_ms=H), n_train=320, n_test=120)


def _on(module: torch.nn.Module, device: str) -> bool:
    return all(t.device.type == device for t in [*module.parameters(), *module.buffers()])


@pytest.mark.parametrize("method", ["alternating", "adamw"])
@pytest.mark.parametrize("device", DEVICES)
def test_tbfm_trains_forecasts_and_compiles_on_the_device(split, device, method):
    train, val, test = split
    torch.manual_seed(0)
    model = TBFM(train.n_channels, 20, H, 4, device=device)
    assert model.device.type == device and _on(model, device)
    fit_tbfm(model, train, val, method=method, max_iters=6 if method == "alternating" else 15)
    assert _on(model, device)  # the normalizer and the restored best state stay on the device
    runway, target, stim, idx = model.inputs(test)
    assert {t.device.type for t in (runway, target, stim, idx)} == {device}
    # inputs from elsewhere (CPU tensors, numpy descriptors) are moved to the model; the forecast stays there
    out = model(runway.cpu(), stim.cpu().numpy(), idx.cpu())
    assert out.device.type == device and out.shape == (test.n_trials, H, train.n_channels)
    pred = model.predict(test)  # back on the CPU as numpy
    assert isinstance(pred, np.ndarray) and np.allclose(pred, out.detach().cpu().numpy(), atol=1e-5)
    assert r2_horizon(pred, test.target) > 0.3
    compiled = compile_tbfm(model, [30], lead=test.lead)  # numpy, CPU
    np.testing.assert_allclose(compiled.predict(test.runway, 30), pred, atol=1e-3 * float(np.abs(pred).max()))
    # the same seed builds the same initial model on every device (parameters start on the CPU)
    torch.manual_seed(0)
    ref = TBFM(train.n_channels, 20, H, 4)
    fit_tbfm(ref, train, val, method=method, max_iters=6 if method == "alternating" else 15)
    if device == "cpu":
        np.testing.assert_array_equal(ref.predict(test), pred)
    else:  # another device rounds differently: close, not bit-equal
        assert abs(r2_horizon(ref.predict(test), test.target) - r2_horizon(pred, test.target)) < 0.02


@pytest.mark.parametrize("device", DEVICES)
def test_baselines_and_fsam_train_on_the_device(split, device):
    train, val, test = split
    for model in (LSSM(train.n_channels, 20, H, device=device), AELSTM(train.n_channels, 20, H, hidden=8, device=device)):
        assert _on(model, device)
        fit_baseline(model, train, val, max_epochs=2)
        assert _on(model, device)
        pred = model.predict(test)
        assert pred.shape == test.target.shape and np.isfinite(pred).all()
    fs = fit_fsam(train, val, max_bases=2, patience=2, max_iters=4, device=device)
    assert fs.model.device.type == device and _on(fs.model, device)  # every added basis joined it there
    assert np.isfinite(fs.model.predict(test)).all() and len(fs.curve) == 2


@pytest.mark.parametrize("device", DEVICES)
def test_a_cell_trains_on_params_device(device):
    tiny = dict(n_channels=6, n_session=260, n_train=150, n_test=60, horizon_ms=H, max_seconds=10.0, max_epochs=1)
    rows = cells.run_sample_efficiency({**tiny, "models": ["tbfm", "lssm"], "device": device}, seed=0).to_pylist()
    default = cells.run_sample_efficiency({**tiny, "models": ["tbfm", "lssm"]}, seed=0).to_pylist()
    for r, d in zip(rows, default):
        if device == "cpu":  # "cpu" is the default: the same numbers
            assert r["test_r2"] == d["test_r2"]
        else:
            assert abs(r["test_r2"] - d["test_r2"]) < 0.02


def test_an_unavailable_device_is_a_clear_one_line_error():
    have = available_devices()
    assert have[0] == "cpu"
    n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    missing = f"cuda:{n}"  # one past the GPUs torch sees: never here
    for build in (
        lambda d: TBFM(4, 20, H, 3, device=d),
        lambda d: LSSM(4, 20, H, device=d),
        lambda d: AELSTM(4, 20, H, device=d),
        resolve_device,
    ):
        with pytest.raises(ValueError) as info:
            build(missing)
        msg = str(info.value)
        assert "\n" not in msg and msg.startswith(f"device='{missing}' is not available: torch sees ")
        assert msg.endswith(f"available here: {', '.join(have)}")
    if n == 0:
        with pytest.raises(ValueError, match=r"^device='cuda' is not available: torch sees no CUDA GPU; available here: cpu"):
            TBFM(4, device="cuda")
    with pytest.raises(ValueError, match=r"^device='gpu' is not a torch device name; available here: cpu"):
        resolve_device("gpu")
    assert resolve_device(None) == resolve_device("cpu") == torch.device("cpu")
    # a cell says so before any work
    with pytest.raises(ValueError, match=f"device='{missing}' is not available"):
        cells.run_sample_efficiency({"device": missing}, seed=0)
