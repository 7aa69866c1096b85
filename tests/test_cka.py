"""CKA: known values, invariances, minibatch equivalence, stage matrices, result files and bad input."""
import json

import numpy as np
import pytest

from nnssl.analysis.cka import (
    MinibatchCKA,
    StageMinibatchCKA,
    features_to_examples,
    linear_cka,
    plot_cka_heatmap,
    read_cka_json,
    stage_cka,
    unbiased_cka,
    unbiased_hsic,
    write_cka_json,
)


@pytest.fixture
def xy():
    np.random.seed(1337)
    X = np.random.randn(100, 10)
    Y = np.random.randn(100, 10) + X
    return X, Y


def _naive_unbiased_hsic(K, L):
    """Song et al. 2012 eq. 5 written out with explicit loops over the definition's three sums (no vectorisation)."""
    n = K.shape[0]
    Kt, Lt = K.copy(), L.copy()
    np.fill_diagonal(Kt, 0)
    np.fill_diagonal(Lt, 0)
    t1 = sum(Kt[i, j] * Lt[j, i] for i in range(n) for j in range(n))
    t2 = Kt.sum() * Lt.sum() / ((n - 1) * (n - 2))
    t3 = 2.0 / (n - 2) * sum(Kt[i, j] * Lt[j, k] for i in range(n) for j in range(n) for k in range(n))
    return (t1 + t2 - t3) / (n * (n - 3))


def test_known_values(xy):
    X, Y = xy
    assert round(linear_cka(X, Y), 5) == 0.55761
    assert round(unbiased_cka(X, Y), 5) == 0.51346


def test_unbiased_hsic_matches_naive_formula():
    rng = np.random.default_rng(0)
    X, Y = rng.normal(size=(9, 3)), rng.normal(size=(9, 4))
    K, L = X @ X.T, Y @ Y.T
    assert unbiased_hsic(K, L) == pytest.approx(_naive_unbiased_hsic(K, L), rel=1e-10)


def test_linear_cka_feature_and_gram_forms_agree():
    """p*q > n^2 switches to the gram form; it must give the same number as the feature form."""
    rng = np.random.default_rng(1)
    X = rng.normal(size=(6, 40))
    Y = X[:, :30] + 0.5 * rng.normal(size=(6, 30))
    Xc, Yc = X - X.mean(0), Y - Y.mean(0)
    feature_form = np.linalg.norm(Yc.T @ Xc) ** 2 / (np.linalg.norm(Xc.T @ Xc) * np.linalg.norm(Yc.T @ Yc))
    assert linear_cka(X, Y) == pytest.approx(feature_form, rel=1e-10)


@pytest.mark.parametrize("fn", [linear_cka, unbiased_cka])
def test_identical_features_give_one(fn, xy):
    X, _ = xy
    assert fn(X, X) == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize("fn", [linear_cka, unbiased_cka])
def test_invariant_to_orthogonal_transform_and_isotropic_scaling(fn, xy):
    X, Y = xy
    rng = np.random.default_rng(7)
    Q, _ = np.linalg.qr(rng.normal(size=(10, 10)))
    ref = fn(X, Y)
    assert fn(X @ Q, Y) == pytest.approx(ref, rel=1e-10)
    assert fn(X, Y @ Q) == pytest.approx(ref, rel=1e-10)
    assert fn(3.7 * X, Y) == pytest.approx(ref, rel=1e-10)
    assert fn(X, 0.01 * Y) == pytest.approx(ref, rel=1e-10)


def test_not_invariant_to_anisotropic_scaling(xy):
    """Sanity check that the invariance tests can fail: a non-isotropic scaling changes CKA."""
    X, Y = xy
    D = np.diag(np.linspace(0.1, 10, 10))
    assert abs(linear_cka(X @ D, Y) - linear_cka(X, Y)) > 1e-3


def test_minibatch_one_batch_equals_unbiased(xy):
    X, Y = xy
    acc = MinibatchCKA()
    acc.update(X, Y)
    assert acc.compute() == pytest.approx(unbiased_cka(X, Y), rel=1e-12)


def test_minibatch_average_of_hsic_over_batches(xy):
    X, Y = xy
    acc = MinibatchCKA()
    for s in range(0, 100, 25):
        acc.update(X[s:s + 25], Y[s:s + 25])
    hs = [[unbiased_hsic(a @ a.T, b @ b.T) for a, b in ((X[s:s + 25], Y[s:s + 25]), (X[s:s + 25], X[s:s + 25]),
                                                          (Y[s:s + 25], Y[s:s + 25]))] for s in range(0, 100, 25)]
    hxy, hxx, hyy = np.mean(hs, axis=0)
    assert acc.n_batches == 4
    assert acc.compute() == pytest.approx(hxy / np.sqrt(hxx * hyy), rel=1e-12)


def test_accepts_torch_tensors(xy):
    torch = pytest.importorskip("torch")
    X, Y = xy
    assert linear_cka(torch.from_numpy(X).float(), torch.from_numpy(Y).float()) == pytest.approx(0.55761, abs=1e-5)


def test_errors():
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="same examples"):
        linear_cka(rng.normal(size=(10, 3)), rng.normal(size=(9, 3)))
    with pytest.raises(ValueError, match="n=4"):
        unbiased_cka(rng.normal(size=(3, 3)), rng.normal(size=(3, 3)))
    with pytest.raises(ValueError, match="n=4"):
        MinibatchCKA().update(rng.normal(size=(3, 2)), rng.normal(size=(3, 2)))
    with pytest.raises(ValueError, match="2-D"):
        linear_cka(rng.normal(size=(4, 2, 2)), rng.normal(size=(4, 2)))
    with pytest.raises(ValueError, match="NaN"):
        linear_cka(np.full((5, 2), np.nan), rng.normal(size=(5, 2)))
    with pytest.raises(RuntimeError, match="before any update"):
        MinibatchCKA().compute()
    with pytest.raises(ValueError, match="unknown CKA kind"):
        stage_cka([rng.normal(size=(5, 2))], [rng.normal(size=(5, 2))], kind="rbf")


def test_features_to_examples_shapes():
    f = np.arange(2 * 3 * 4 * 4 * 4, dtype=float).reshape(2, 3, 4, 4, 4)
    assert features_to_examples(f, "flatten").shape == (2, 3 * 64)
    mean = features_to_examples(f, "mean")
    assert mean.shape == (2, 3)
    assert mean[0, 0] == pytest.approx(f[0, 0].mean())
    grid = features_to_examples(f, "grid", grid=2)
    assert grid.shape == (2, 3 * 8)
    assert grid[0, 0] == pytest.approx(f[0, 0, :2, :2, :2].mean())
    with pytest.raises(ValueError, match="B, C, D, H, W"):
        features_to_examples(np.zeros((2, 3, 4)))


def test_stage_cka_matrix():
    rng = np.random.default_rng(3)
    feats = [rng.normal(size=(8, 4, 4, 4, 4)), rng.normal(size=(8, 8, 2, 2, 2)), rng.normal(size=(8, 16, 1, 1, 1))]
    other = [f + 0.3 * rng.normal(size=f.shape) for f in feats]
    for kind in ("linear", "unbiased"):
        self_m = stage_cka(feats, feats, kind=kind)
        assert self_m.shape == (3, 3)
        np.testing.assert_allclose(np.diag(self_m), 1.0, atol=1e-12)
        m = stage_cka(feats, other, kind=kind, pooling="flatten")
        ex_a = [f.reshape(8, -1) for f in feats]
        ex_b = [f.reshape(8, -1) for f in other]
        fn = linear_cka if kind == "linear" else unbiased_cka
        assert m[1, 2] == pytest.approx(fn(ex_a[1], ex_b[2]), rel=1e-12)
    with pytest.raises(ValueError, match="same images"):
        stage_cka(feats, [f[:6] for f in other])


def test_stage_minibatch_equals_stage_cka_on_one_batch_and_stage_cka_accepts_torch():
    torch = pytest.importorskip("torch")
    g = torch.Generator().manual_seed(0)
    feats_a = [torch.randn(6, 4, 4, 4, 4, generator=g), torch.randn(6, 8, 2, 2, 2, generator=g)]
    feats_b = [f + 0.5 * torch.randn(f.shape, generator=g) for f in feats_a]
    acc = StageMinibatchCKA(pooling="mean")
    acc.update(feats_a, feats_b)
    np.testing.assert_allclose(acc.compute(), stage_cka(feats_a, feats_b, "unbiased", pooling="mean"), rtol=1e-10)


def test_cka_json_round_trip_and_heatmap(tmp_path):
    m = np.array([[1.0, 0.5], [0.4, np.nan]])
    p = write_cka_json(tmp_path / "cka" / "a.json", dataset="Dataset902_X", method="smit", shots=5,
                       matrices={"linear": m, "unbiased": m * 0.9}, n_examples=12)
    raw = json.loads(p.read_text())
    assert raw["schema_version"] == 1 and raw["shots"] == "5" and raw["cka"]["linear"][1][1] is None
    doc = read_cka_json(p)
    np.testing.assert_allclose(doc["cka"]["linear"], m)
    assert doc["stages_a"] == ["stage0", "stage1"]
    with pytest.raises(ValueError, match="does not match"):
        write_cka_json(tmp_path / "b.json", dataset="d", method="m", shots="all", matrices={"linear": m},
                       stages_a=["s0"])
    (tmp_path / "bad.json").write_text(json.dumps({"dataset": "d"}))
    with pytest.raises(ValueError, match="missing keys"):
        read_cka_json(tmp_path / "bad.json")
    fig = plot_cka_heatmap(m, path=tmp_path / "h.png", title="t")
    assert (tmp_path / "h.png").stat().st_size > 1000
    assert len(fig.axes) == 2  # heat map + colour bar
