"""The batched engine against GPyTorch's ExactGP, incremental updates, and numerical safety."""

import gpytorch
import numpy as np
import pytest
import torch

from neuro_opt.gp import BatchGP, GPNumericalError

X = np.argwhere(np.ones((6, 5))).astype(float)
P = len(X)


def exact_posterior(Xo, yo, lengthscale, noise_std, outputscale):
    class M(gpytorch.models.ExactGP):
        def __init__(self, x, y, lik):
            super().__init__(x, y, lik)
            self.mean = gpytorch.means.ZeroMean()
            self.cov = gpytorch.kernels.ScaleKernel(gpytorch.kernels.MaternKernel(nu=2.5, ard_num_dims=X.shape[1]))

        def forward(self, x):
            return gpytorch.distributions.MultivariateNormal(self.mean(x), self.cov(x))

    lik = gpytorch.likelihoods.GaussianLikelihood(noise_constraint=gpytorch.constraints.GreaterThan(1e-12))
    m = M(torch.tensor(Xo), torch.tensor(yo), lik)
    m.cov.base_kernel.lengthscale = torch.tensor(lengthscale)
    m.cov.outputscale = torch.tensor(outputscale)
    lik.noise = torch.tensor(noise_std ** 2)
    m.eval()
    with torch.no_grad(), gpytorch.settings.fast_pred_var(False), gpytorch.settings.cholesky_jitter(0.0, 0.0):
        f = m(torch.tensor(X))
        return f.mean.numpy(), f.variance.numpy()


def fill(gp, rng, n, repeat_every=3):
    obs = [[] for _ in range(gp.b)]
    ys = [[] for _ in range(gp.b)]
    for t in range(n):
        pts = rng.integers(0, P, gp.b) if t % repeat_every else np.full(gp.b, 5)
        y = rng.random(gp.b)
        gp.observe(pts, y)
        for r in range(gp.b):
            obs[r].append(int(pts[r]))
            ys[r].append(float(y[r]))
    return obs, ys


@pytest.mark.parametrize("mode", ["variable", "fixed"])
@pytest.mark.parametrize("b", [1, 7])
def test_posterior_equals_gpytorch_exact_gp(mode, b):
    rng = np.random.default_rng(b)
    gp = BatchGP(X, b, 40, mode=mode, lengthscale=[1.3, 0.7], noise=0.1, outputscale=0.6, fit_steps=4)
    obs, ys = fill(gp, rng, 15)
    gp.fit()
    mu, var = gp.posterior()
    for r in range(b):
        yn = np.array(ys[r]) / max(ys[r])
        m, v = exact_posterior(X[obs[r]], yn, gp.lengthscale[r].numpy(), float(gp.noise[r]), float(gp.outputscale[r]))
        assert np.abs(mu[r].numpy() - m).max() < 1e-5
        assert np.abs(var[r].numpy() - v).max() < 1e-5


def test_collapsed_marginal_likelihood_equals_full_data_mll():
    rng = np.random.default_rng(3)
    gp = BatchGP(X, 2, 40, mode="variable", fit_steps=0)
    obs, ys = fill(gp, rng, 12)
    ls, nz, os_ = torch.tensor([[0.9, 1.7], [2.0, 0.5]]), torch.tensor([0.03, 0.2]), torch.tensor([0.4, 1.3])
    mine = gp._mll(gp._collapsed(), ls, nz, os_)
    for r in range(2):
        yn = np.array(ys[r]) / max(ys[r])
        K = gpytorch.kernels.MaternKernel(nu=2.5, ard_num_dims=2)
        K.lengthscale = ls[r]
        C = os_[r] * K(torch.tensor(X[obs[r]])).to_dense().detach() + nz[r] ** 2 * torch.eye(len(yn))
        ref = torch.distributions.MultivariateNormal(torch.zeros(len(yn)), C).log_prob(torch.tensor(yn))
        assert float(mine[r]) == pytest.approx(float(ref), abs=1e-6)


def test_fixed_incremental_equals_recomputation():
    rng = np.random.default_rng(5)
    prior = rng.random(P)
    inc = BatchGP(X, 3, 30, mode="fixed", lengthscale=1.1, noise=0.07, outputscale=0.5, prior_mean=prior)
    obs, ys = fill(inc, rng, 20)
    # recompute from scratch: variable-mode engine with the same (fixed) hyperparameters, no refit
    rec = BatchGP(X, 3, 30, mode="variable", prior_mean=prior, fit_steps=0, rho_bounds=(0.01, 10), noise_bounds=(1e-3, 1))
    rec.raw_ls = rec.ls_con.inverse_transform(torch.full((3, 2), 1.1))
    rec.raw_noise = rec.noise_con.inverse_transform(torch.full((3,), 0.07))
    rec.raw_os = rec.os_con.inverse_transform(torch.full((3,), 0.5))
    for t in range(20):
        rec.observe([obs[r][t] for r in range(3)], [ys[r][t] for r in range(3)])
    for w in (1.0, 0.4):
        inc.set_prior_weight(w)
        rec.set_prior_weight(w)
        (m1, v1), (m2, v2) = inc.posterior(), rec.posterior()
        assert torch.allclose(m1, m2, atol=1e-7) and torch.allclose(v1, v2, atol=1e-7)


@pytest.mark.parametrize("mode,fit_tol", [("variable", 0.0), ("variable", 0.05), ("fixed", 0.0)])
def test_replicate_result_does_not_depend_on_its_batch(mode, fit_tol):
    rng = np.random.default_rng(11)
    pts = rng.integers(0, P, (10, 6))
    ys = rng.random((10, 6))
    big = BatchGP(X, 6, 12, mode=mode, fit_steps=5, fit_tol=fit_tol)
    solo = BatchGP(X, 1, 12, mode=mode, fit_steps=5, fit_tol=fit_tol)
    for t in range(10):
        big.observe(pts[t], ys[t])
        solo.observe(pts[t, 2:3], ys[t, 2:3])
        big.fit()
        solo.fit()
    mb, vb = big.posterior()
    ms, vs = solo.posterior()
    assert torch.allclose(mb[2], ms[0], atol=1e-9) and torch.allclose(vb[2], vs[0], atol=1e-9)


@pytest.mark.parametrize("mode", ["variable", "fixed"])
@pytest.mark.parametrize("case", ["repeat_one_point", "all_equal", "all_zero", "zero_variance"])
def test_no_nan_reaches_the_acquisition(mode, case):
    rng = np.random.default_rng(0)
    gp = BatchGP(X, 4, 60, mode=mode, noise_bounds=(1e-4, 0.05), noise=1e-4, fit_steps=5)
    for t in range(50):
        pts = np.full(4, 7) if case in ("repeat_one_point", "zero_variance") else rng.integers(0, P, 4)
        y = {"repeat_one_point": rng.random(4), "all_equal": np.full(4, 0.3), "all_zero": np.zeros(4),
             "zero_variance": np.full(4, 2.0)}[case]
        gp.observe(pts, y)
        gp.fit()
        m, v = gp.posterior()
        assert torch.isfinite(m).all() and torch.isfinite(v).all() and (v > 0).all()


def test_cholesky_failure_names_replicate_and_hyperparameters():
    gp = BatchGP(X, 2, 5, mode="fixed", lengthscale=1.0, noise=1e-12, max_jitter=1e-11)
    gp.observe([3, 3], [1.0, 1.0])
    with pytest.raises(GPNumericalError, match=r"replicate 0: lengthscale=\[1.0, 1.0\], noise=1e-12"):
        gp.observe([3, 3], [1.0, 1.0])


def test_bad_observations_raise():
    gp = BatchGP(X, 2, 5)
    with pytest.raises(ValueError, match="NaN"):
        gp.observe([1, 2], [0.1, float("nan")])
    with pytest.raises(ValueError, match="out of range"):
        gp.observe([1, P], [0.1, 0.2])


@pytest.mark.parametrize("path", ["pairs", "lattice"])
def test_analytic_mll_gradient_equals_autograd(path):
    """Both refit paths: kernel terms per pair of points, and per grid-offset bin (integer grids)."""
    rng = np.random.default_rng(4)
    gp = BatchGP(X, 3, 40, mode="variable", fit_steps=0)
    assert gp.lattice is not None  # X is an integer grid
    fill(gp, rng, 14)
    data = gp._collapsed()
    if path == "lattice":
        data["bin"] = gp._pair_bins(data)
    else:
        Xu = data["Xu"]
        data["sqdiff"] = (Xu.unsqueeze(-2) - Xu.unsqueeze(-3)) ** 2
    raw = torch.tensor(rng.normal(0, 1, (3, 4)), requires_grad=True)
    mll, grad = gp.mll_and_grad(data, raw.detach())
    ref = gp._mll(data, gp.ls_con.transform(raw[:, :2]), gp.noise_con.transform(raw[:, 2]),
                  gp.os_con.transform(raw[:, 3]))
    ref.sum().backward()
    assert torch.allclose(mll, ref.detach(), atol=1e-8)
    assert torch.allclose(grad, raw.grad, rtol=1e-6, atol=1e-8)


def test_inplace_lapack_matches_torch():
    """neuro_opt.gp.lapack factors and inverts in the lower triangle (C order), in place, as torch does."""
    from neuro_opt.gp import lapack

    assert lapack.available()  # the CPU torch build exports LAPACK: the refit's fast path runs here
    rng = np.random.default_rng(1)
    A = torch.tensor(rng.normal(size=(300, 300)))
    K = A @ A.T + 300 * torch.eye(300, dtype=torch.float64)
    r = torch.tensor(rng.normal(size=300))
    B = K.clone()
    assert lapack.potrf_(B) == 0
    assert torch.allclose(B.tril(), torch.linalg.cholesky(K), rtol=0, atol=1e-12)
    assert torch.equal(B.triu(1), K.triu(1))  # the other triangle untouched
    x = r.clone()
    lapack.potrs_(B, x)
    assert torch.allclose(x, torch.linalg.solve(K, r), rtol=0, atol=1e-12)
    assert lapack.potri_(B) == 0
    assert torch.allclose(B.tril(), torch.linalg.inv(K).tril(), rtol=0, atol=1e-12)
    K[5, 5] = -1.0
    assert lapack.potrf_(K.clone()) == 6  # not positive definite: LAPACK's info, no exception
    with pytest.raises(ValueError, match="C-contiguous square float64"):
        lapack.potrf_(K.float())


def test_large_refit_gradient_in_place_equals_the_torch_path():
    """Above INPLACE_MIN_U unique points the refit's gradient comes from the in-place LAPACK path
    (one triangle of Kn^-1); it equals the torch path, with replicates padded to different U."""
    rng = np.random.default_rng(8)
    Xg = np.argwhere(np.ones((20, 20, 15))).astype(float)
    gp = BatchGP(Xg, 3, 400, mode="variable")
    f = np.exp(-0.5 * (((Xg - [5, 8, 3]) / [4, 5, 3]) ** 2).sum(1))
    for t in range(330):
        pts = rng.integers(0, len(Xg), 3)
        pts[2] = rng.integers(0, 300)  # replicate 2: repeats, fewer unique points (padding)
        gp.observe(pts, f[pts] + 0.05 * rng.standard_normal(3))
    data = gp._collapsed()
    data["bin"] = gp._pair_bins(data)
    assert data["mask"].shape[1] >= gp.INPLACE_MIN_U and int(gp.n_slots.min()) < data["mask"].shape[1]
    raw = torch.cat([gp.raw_ls, gp.raw_noise[:, None], gp.raw_os[:, None]], 1) + torch.tensor(rng.normal(0, 0.3, (3, 5)))
    d_fast = dict(data)
    mll_fast, fast = gp.mll_and_grad(d_fast, raw, with_mll=True)
    assert "bin_lower" in d_fast  # the in-place path ran
    gp.INPLACE_MIN_U = 10 ** 9  # this instance only: the torch path
    d_ref = dict(data)
    mll_ref, ref = gp.mll_and_grad(d_ref, raw, with_mll=True)
    assert "bin_lower" not in d_ref
    assert torch.allclose(fast, ref, rtol=1e-9, atol=1e-9)
    val = gp._raw_lo + gp._raw_span * torch.sigmoid(raw)
    exact = gp._mll(data, val[:, :3], val[:, 3], val[:, 4])
    assert torch.allclose(mll_fast, exact, rtol=1e-10, atol=1e-8) and torch.allclose(mll_ref, exact, rtol=1e-10, atol=1e-8)


def test_engine_flushes_subnormals_only_while_it_runs():
    """The refit and the posterior flush subnormal floats (x86 is ~100x slower on them) and leave
    the thread's floating-point mode as they found it."""
    rng = np.random.default_rng(5)
    gp = BatchGP(X, 2, 20, mode="variable", fit_steps=2)
    fill(gp, rng, 6)
    tiny = torch.tensor([1e-310], dtype=torch.float64)
    assert float(tiny * 1.0) != 0.0  # subnormals kept by default
    gp.fit()
    gp.posterior()
    assert float(tiny * 1.0) != 0.0
    assert torch.isfinite(gp.posterior()[0]).all()


def test_refit_stops_each_replicate_at_convergence():
    """fit_tol: a replicate stops once a step moved its MLL by <= fit_tol nats; until then its steps are
    those of the plain refit, and fit_tol=0 always takes fit_steps steps."""
    plain = BatchGP(X, 4, 40, mode="variable", fit_steps=10)
    tiny = BatchGP(X, 4, 40, mode="variable", fit_steps=10, fit_tol=1e-300)  # never met: the same steps
    tol = BatchGP(X, 4, 40, mode="variable", fit_steps=10, fit_tol=0.05)
    for gp in (plain, tiny, tol):
        fill(gp, np.random.default_rng(3), 25)
    for _ in range(20):
        for gp in (plain, tiny, tol):
            gp.fit()
        assert plain.last_fit_steps.tolist() == [10] * 4 and tiny.last_fit_steps.tolist() == [10] * 4
        assert torch.equal(plain.lengthscale, tiny.lengthscale) and torch.equal(plain.noise, tiny.noise)
    assert int(tol.last_fit_steps.max()) < 10  # converged: a warm refit stops after a few steps
    data = tol._collapsed()
    before = tol._mll(data, tol.lengthscale, tol.noise, tol.outputscale)
    tol.fit()
    after = tol._mll(data, tol.lengthscale, tol.noise, tol.outputscale)
    one = tol.last_fit_steps == 1  # stopped after one step: that step moved the MLL by <= fit_tol
    assert bool(one.any()) and torch.all((after - before)[one].abs() <= 0.05)
    with pytest.raises(ValueError, match="fit_tol"):
        BatchGP(X, 1, 4, mode="variable", fit_tol=-1.0)


def test_refit_increases_the_marginal_likelihood():
    rng = np.random.default_rng(9)
    gp = BatchGP(X, 4, 40, mode="variable", fit_steps=30)
    fill(gp, rng, 20)
    before = gp.mll()
    gp.fit()
    assert torch.all(gp.mll() > before)


@pytest.mark.parametrize("mode", ["variable", "fixed"])
def test_buffers_grow_past_the_initial_capacity(mode):
    rng = np.random.default_rng(2)
    small = BatchGP(X, 2, 3, mode=mode, fit_steps=2)
    big = BatchGP(X, 2, 40, mode=mode, fit_steps=2)
    for _ in range(11):
        pts, y = rng.integers(0, P, 2), rng.random(2)
        small.observe(pts, y)
        big.observe(pts, y)
    small.fit()
    big.fit()
    assert small.capacity >= 11
    (m1, v1), (m2, v2) = small.posterior(), big.posterior()
    assert torch.allclose(m1, m2, atol=1e-9) and torch.allclose(v1, v2, atol=1e-9)


def test_non_grid_inputs_use_the_pair_path():
    assert BatchGP(X + 0.5 * np.random.default_rng(0).random(X.shape), 2, 8).lattice is None
    assert BatchGP(X, 2, 8, mode="fixed").lattice is None


def _large_gp(rng, shape, n_obs, b=3, prior=False, repeats=False):
    """A variable-rho engine on a full integer box of ``shape`` with ``n_obs`` observations per replicate."""
    Xb = np.argwhere(np.ones(shape)).astype(float)
    Pb = len(Xb)
    pm = rng.random(Pb) * 0.5 if prior else None
    gp = BatchGP(Xb, b, n_obs + 1, mode="variable", prior_mean=pm, fit_steps=5)
    bump = np.exp(-0.5 * (((Xb - rng.uniform(0, np.array(shape) - 1)) / (0.3 * np.array(shape))) ** 2).sum(1))
    for t in range(n_obs):
        pts = rng.integers(0, 8 if repeats else Pb, b)
        gp.observe(pts, bump[pts] + 0.05 * rng.random(b))
    gp.fit()
    return gp


@pytest.mark.parametrize("shape,n_obs,prior,repeats", [((22, 22, 21), 200, False, False), ((100, 60), 150, True, False),
                                                        ((9, 9, 8, 7), 120, False, True)])
def test_screened_argmax_equals_the_full_posterior(shape, n_obs, prior, repeats):
    """The screened acquisition (FFT mean, distance-transform variance bound, exact values where the
    bound reaches the maximum) gives the full posterior's values wherever it evaluates, and every
    point it leaves out is below the maximum: the same argmax and the same ties."""
    rng = np.random.default_rng(11)
    gp = _large_gp(rng, shape, n_obs, prior=prior, repeats=repeats)
    assert gp.can_screen
    mean, var = gp.posterior()
    for kappa in (0.0, 2.0, 5.0):
        full = mean + kappa * var.sqrt()
        got = gp.screened(kappa)
        ev = torch.isfinite(got)
        assert not torch.isnan(got).any()
        assert bool(ev.any(1).all()) and int(ev.sum(1).max()) < gp.P // 4  # it screens most points out
        assert torch.allclose(got[ev], full[ev], rtol=0, atol=1e-10)
        top = full.max(1).values
        assert bool((full[~ev] < (top[:, None].expand_as(full))[~ev]).all())
        # the point it picks holds the full posterior's maximum (to the rounding of a matrix product
        # whose blocking depends on its size and the CPU's BLAS kernel, so not bit for bit)
        picked = full.gather(1, got.argmax(1, keepdim=True))[:, 0]
        assert torch.allclose(got.max(1).values, picked, rtol=0, atol=1e-12)
        assert bool((picked >= top - 1e-12).all())
        assert torch.allclose(got.max(1).values, top, rtol=0, atol=1e-10)


@pytest.mark.parametrize("repeats", [False, True])
def test_nearest_observations_bound_the_posterior_variance(repeats):
    """The screened argmax's refined bound (the variance given only the nearest observed points) is
    never below the full posterior variance, and closes most of the gap from the prior variance."""
    rng = np.random.default_rng(12)
    gp = _large_gp(rng, (22, 22, 21), 200, repeats=repeats)
    _, var = gp.posterior()
    for q in range(gp.b):
        idx = torch.arange(gp.P)
        vk = gp._knn_var_bound(q, idx, gp.lengthscale[q], gp.noise[q], gp.outputscale[q])
        assert bool((vk >= var[q] - 1e-12).all())
        gap = float((gp.outputscale[q] - var[q]).mean())  # what the observations remove from the prior
        assert float((vk - var[q]).mean()) < 0.5 * gap


def test_large_posterior_in_place_factor_equals_the_torch_path():
    """Above INPLACE_MIN_U unique points the posterior's and the screening's factor is LAPACK's
    in place (one triangle); values equal the torch factor's."""
    rng = np.random.default_rng(21)
    gp = _large_gp(rng, (22, 22, 21), 300, b=2)
    assert int(gp.n_slots.min()) >= gp.INPLACE_MIN_U
    mean, var = gp.posterior()
    got = gp.screened(2.0)
    ref = BatchGP.__new__(BatchGP)
    ref.__dict__.update(gp.__dict__)
    ref.INPLACE_MIN_U = 10 ** 9  # this copy always factors with torch
    mean_ref, var_ref = ref.posterior()
    assert torch.allclose(mean, mean_ref, rtol=0, atol=1e-10) and torch.allclose(var, var_ref, rtol=0, atol=1e-10)
    ev = torch.isfinite(got)
    assert torch.equal(ev, torch.isfinite(ref.screened(2.0)))
    assert torch.allclose(got[ev], (mean_ref + 2.0 * var_ref.sqrt())[ev], rtol=0, atol=1e-10)


def test_gpbo_queries_the_same_points_with_and_without_screening():
    """A whole run in a 10,000-point space: the screened path (ask and best without a cached
    posterior) makes the same choices as the full posterior, replicate for replicate."""
    from neuro_opt.algorithms import make
    from neuro_opt.space import SearchSpace

    space = SearchSpace({"a": range(25), "b": range(20), "c": range(20)})
    rng = np.random.default_rng(3)
    f = np.exp(-0.5 * (((space.X - [6, 12, 4]) / [5, 6, 4]) ** 2).sum(1))
    runs = []
    for screen in (True, False):
        opt = make("gpbo", space, n_reps=2, seed=7, capacity=140, fit_steps=3)
        if screen:
            opt.gp.SCREEN_MIN_WORK = 2**18  # screen from 27 unique points on: most of the run takes that path
        else:
            opt.gp.SCREEN_MIN_POINTS = 10 ** 9  # this engine always takes the full posterior
        resp = np.random.default_rng(5)
        used = 0
        picks, bests = [], []
        for t in range(130):
            x = opt.ask()
            opt.tell(x, np.clip(f[x] + resp.normal(0, 0.05, 2), 0, None))
            used += opt.gp.prefer_screen
            picks.append(x)
            bests.append(opt.best())
        runs.append((np.array(picks), np.array(bests), used))
    assert runs[0][2] > 20 and runs[1][2] == 0  # the screened path did run, the other never
    assert np.array_equal(runs[0][0], runs[1][0]) and np.array_equal(runs[0][1], runs[1][1])


@pytest.mark.parametrize("b", [8, 11])
def test_compiled_refit_gradient_equals_the_torch_path(b):
    """The compiled refit routine (neuro_opt/gp/_refit_terms.c) gives the torch path's gradient and
    MLL on a lattice, with replicates padded to different sizes and a batch that is not a whole
    number of its 8-replicate passes; a covariance that is not positive definite is refused."""
    from neuro_opt.gp import refit_terms

    assert refit_terms.available()  # built by `pip install -e .` (setup.py): the fast path runs here
    rng = np.random.default_rng(21)
    gp = BatchGP(X, b, 40, mode="variable", fit_steps=0)
    for t in range(24):
        pts = rng.integers(0, P, b)
        pts[::3] = rng.integers(0, 6, len(pts[::3]))  # every third replicate: repeats, fewer unique points
        gp.observe(pts, rng.random(b))
    data = gp._collapsed()
    data["bin"] = gp._pair_bins(data)
    assert int(gp.n_slots.min()) < data["mask"].shape[1]  # padding
    assert not gp._compiled(7, 10, data["r"])  # smaller batches (online use) keep the torch path
    raw = torch.tensor(rng.normal(0, 1, (b, 4)))
    d_fast = dict(data)
    mll_fast, fast = gp.mll_and_grad(d_fast, raw)
    assert "n_slots" in d_fast and "bin_lower" not in d_fast
    gp.COMPILED_MAX_U = 0  # this instance only: the torch path
    mll_ref, ref = gp.mll_and_grad(dict(data), raw)
    assert torch.allclose(fast, ref, rtol=1e-9, atol=1e-9) and torch.allclose(mll_fast, mll_ref, rtol=1e-11, atol=1e-9)
    U = data["mask"].shape[1]
    table = torch.zeros(b, P + 1, dtype=torch.float64)
    table[:, 0] = 1.0  # every pair covaries fully: singular without noise on the diagonal
    bins = torch.zeros(b, U, U, dtype=torch.long)
    args = (torch.full((b,), U), bins, table, torch.zeros(b, U, dtype=torch.float64), torch.ones(b, U, dtype=torch.float64))
    assert refit_terms.terms(*args) is None


@pytest.mark.parametrize("b", [8, 11])
def test_compiled_posterior_equals_the_torch_path(b):
    """The compiled posterior (one factor and triangular solve per replicate, over the points in
    chunks of 128) equals the torch path's, on a 144-point grid with padded replicates."""
    rng = np.random.default_rng(5)
    Xg = np.argwhere(np.ones((12, 12))).astype(float)
    gp = BatchGP(Xg, b, 40, mode="variable", fit_steps=2)
    for t in range(30):
        pts = rng.integers(0, len(Xg), b)
        pts[::3] = rng.integers(0, 8, len(pts[::3]))
        gp.observe(pts, rng.random(b))
        gp.fit()
    assert gp._compiled_posterior(gp._collapsed(), gp.outputscale) is not None  # the compiled path runs
    mean, var = gp.posterior()
    gp.COMPILED_MAX_U = 0  # this instance only: the torch path
    assert gp._compiled_posterior(gp._collapsed(), gp.outputscale) is None
    mean_ref, var_ref = gp.posterior()
    assert torch.allclose(mean, mean_ref, rtol=0, atol=1e-10) and torch.allclose(var, var_ref, rtol=0, atol=1e-10)
