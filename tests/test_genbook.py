"""The shared helpers do what the chapters rely on, checked against independent references."""
from __future__ import annotations

import functools
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.linalg
import scipy.stats
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "chapters"))
import genbook  # noqa: E402


def test_frechet_distance_matches_the_scipy_formula():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(500, 6))
    b = rng.normal(size=(400, 6)) @ rng.normal(size=(6, 6)) * 0.5 + 1.0
    mu_a, s_a = a.mean(0), np.cov(a, rowvar=False)
    mu_b, s_b = b.mean(0), np.cov(b, rowvar=False)
    covmean = scipy.linalg.sqrtm(s_a @ s_b).real
    expected = ((mu_a - mu_b) ** 2).sum() + np.trace(s_a + s_b - 2 * covmean)
    assert genbook.frechet_distance(a, b) == pytest.approx(expected, rel=1e-6)
    assert genbook.frechet_distance(a, a) == pytest.approx(0.0, abs=1e-8)


def test_pixel_gaussian_log_prob_and_samples():
    rng = np.random.default_rng(1)
    x = torch.tensor(rng.uniform(size=(300, 4)))
    y = torch.tensor(rng.integers(0, 2, size=300))
    model = genbook.PixelGaussian(shrink=1e-3).fit(x, y)
    ref = np.logaddexp(*[
        scipy.stats.multivariate_normal(model.means_[k].numpy(), np.cov(x[y == k].numpy(), rowvar=False, bias=True)
                                        + 1e-3 * np.eye(4)).logpdf(x.numpy()) + np.log(model.priors_[k])
        for k in range(2)])
    assert np.allclose(model.log_prob(x).numpy(), ref, atol=1e-8)
    g = torch.Generator().manual_seed(0)
    samples, labels = model.sample(1000, y=torch.zeros(1000, dtype=torch.long), generator=g)
    assert samples.shape == (1000, 1, 2, 2) and labels.eq(0).all()
    assert float(samples.min()) >= 0 and float(samples.max()) <= 1


def test_setup_seeds_and_picks_a_device(monkeypatch):
    monkeypatch.setenv("GENBOOK_THREADS", "1")
    device = genbook.setup(seed=3, style=False)
    a = torch.rand(3)
    genbook.setup(seed=3, style=False)
    assert torch.equal(a, torch.rand(3))
    assert device.type in {"cpu", "cuda", "mps"}
    assert torch.get_num_threads() == 1


def test_show_images_draws_a_grid():
    import matplotlib
    matplotlib.use("Agg")
    ax = genbook.show_images(torch.rand(10, 1, 28, 28), nrow=5)
    assert ax.images[0].get_array().shape == (2 * 30 + 2, 5 * 30 + 2)


def test_the_evaluation_classifier_is_accurate():
    net, acc = genbook.feature_classifier()
    assert 0.85 < acc < 0.95
    x, y = genbook.load_fashion_mnist(train=False)
    feats, preds = genbook.features(net, x[:2000])
    assert feats.shape == (2000, 128)
    assert (preds == y[:2000].numpy()).mean() > 0.85


def test_features_do_not_depend_on_the_batch_size():
    net, _ = genbook.feature_classifier()
    x, _ = genbook.load_fashion_mnist(train=False)
    feats, preds = genbook.features(net, x[:103], batch_size=250)
    feats_small, preds_small = genbook.features(net, x[:103], batch_size=10)   # a ragged last batch
    assert feats.dtype == feats_small.dtype == np.float64
    np.testing.assert_allclose(feats_small, feats, rtol=1e-5, atol=1e-6)
    assert (preds_small == preds).all()


def test_the_evaluation_classifier_trains_bit_for_bit_the_same():
    """Issue 15: the scale is one network. Training it again (in this process, with other
    thread settings and another random state than `make data` had) gives the weights kept
    in data/ exactly, and leaves the caller's random stream and thread count alone."""
    saved, _ = genbook.feature_classifier()
    torch.set_num_threads(2)
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    again, _ = genbook.feature_classifier(cache=False)
    assert torch.equal(torch.rand(3), expected_next)
    assert torch.get_num_threads() == 2
    assert not torch.are_deterministic_algorithms_enabled()
    for name, tensor in saved.state_dict().items():
        assert torch.equal(tensor, again.state_dict()[name]), name


def test_the_scale_is_computed_once_and_shared():
    scale = genbook.book_scale()
    assert genbook.book_scale().floor == scale.floor
    assert len(scale.floor_draws) == 6 and len(scale.baseline_draws) == 5
    # A perfect model's 10,000 samples score the floor: small, but not zero.
    assert 0.05 < scale.floor < 2 and scale.floor == pytest.approx(np.mean(scale.floor_draws))
    # The baseline is far above the floor, and its draws agree with each other.
    assert scale.baseline > 10 * scale.floor
    assert np.std(scale.baseline_draws) < 0.05 * scale.baseline
    # frechet_to_test uses the cached test statistics: the test set against itself is 0.
    x_test, _ = genbook.load_fashion_mnist(train=False)
    fd, preds = genbook.frechet_to_test(x_test)
    assert fd == pytest.approx(0.0, abs=1e-3)
    assert len(preds) == len(x_test)


def test_the_ring_and_its_mode_count():
    """Chapters 6 and 9 count modes the same way: real ring data cover all eight with about
    99% of points within 3 standard deviations (chi-squared with 2 degrees of freedom), and
    points from a single mode cover one."""
    gen = torch.Generator().manual_seed(0)
    x = genbook.sample_ring(20_000, gen)
    modes, quality, counts = genbook.mode_report(x)
    assert x.shape == (20_000, 2) and modes == 8 and int(counts.sum()) == round(quality * len(x))
    assert quality == pytest.approx(1 - np.exp(-4.5), abs=0.005)
    one = genbook.ring_centres()[3] + genbook.RING_STD * torch.randn(2500, 2, generator=gen)
    assert genbook.mode_report(one)[0] == 1
    assert torch.linalg.norm(genbook.ring_centres(), dim=1).allclose(torch.tensor(genbook.RING_RADIUS))


def test_a_saved_model_loads_only_into_the_same_config(monkeypatch, tmp_path):
    monkeypatch.setenv("GENBOOK_DATA", str(tmp_path))
    torch.manual_seed(0)
    trained = genbook.MLPVAE(4, (8,))
    config = {"z_dim": 4, "hidden": [8], "epochs": 1}
    assert genbook.load_model("vae", genbook.MLPVAE(4, (8,)), config) is None       # nothing saved yet
    genbook.save_model("vae", trained, config, seconds=12.5)
    fresh = genbook.MLPVAE(4, (8,))
    assert genbook.load_model("vae", fresh, config) == 12.5
    for a, b in zip(fresh.state_dict().values(), trained.state_dict().values()):
        assert torch.equal(a, b)
    # Another config, or a network of other sizes, is refused and left as it was.
    assert genbook.load_model("vae", genbook.MLPVAE(4, (8,)), {**config, "epochs": 2}) is None
    other = genbook.MLPVAE(4, (16,))
    before = {k: v.clone() for k, v in other.state_dict().items()}
    assert genbook.load_model("vae", other, config) is None
    assert all(torch.equal(before[k], v) for k, v in other.state_dict().items())
    # A corrupt file is refused too.
    (tmp_path / "model-vae.pt").write_bytes(b"not a model")
    assert genbook.load_model("vae", genbook.MLPVAE(4, (8,)), config) is None


def _kneser_ney_by_hand(words, order, d):
    """Interpolated Kneser-Ney straight from its definition, with strings and loops (slow)."""
    grams = []  # every predicted symbol with the `order` symbols before it, as one string
    for w in words:
        s = "." * order + w + "."
        grams += [s[t - order:t + 1] for t in range(order, len(s))]

    @functools.lru_cache(maxsize=None)
    def a(h, w):
        if len(h) == order:  # the top order: plain counts
            return sum(g == h + w for g in grams)
        # lower orders: how many different symbols come just before h w
        return len({g[-len(h) - 2] for g in grams if g.endswith(h + w)})

    def p(w, h):
        lower = p(w, h[1:]) if h else 1 / len(genbook.ALPHABET)
        counts = {x: a(h, x) for x in genbook.ALPHABET}
        total = sum(counts.values())
        if total == 0:
            return lower
        types = sum(c > 0 for c in counts.values())
        return max(counts[w] - d, 0) / total + d * types / total * lower

    return p


def test_kneser_ney_matches_its_definition():
    rng = np.random.default_rng(0)
    words = ["".join(rng.choice(list("abcde"), size=rng.integers(1, 6))) for _ in range(60)]
    x = genbook.encode_names(words, 6)
    for order in (0, 1, 2, 3):
        # every context of known letters, seen or not, and some with the start symbol
        contexts = rng.choice(6, size=(40, order))  # symbols 0 ('.') and a..e
        for d in (0.0, 0.4, 1.0):
            by_hand = _kneser_ney_by_hand(words, order, d)
            model = genbook.KneserNey(x, order, discount=d)
            got = model.probs(contexts)
            for c, row in zip(contexts, got):
                h = "".join(genbook.ALPHABET[i] for i in c)
                expected = [by_hand(w, h) for w in genbook.ALPHABET]
                np.testing.assert_allclose(row, expected, rtol=1e-12, atol=1e-15)


def test_kneser_ney_is_a_distribution_and_reduces_to_counting():
    words, _ = genbook.read_names()
    train, val, _ = genbook.split_names(words)
    max_len = max(len(w) for w in words)
    x, x_val = genbook.encode_names(train, max_len), genbook.encode_names(val, max_len)
    # order 0 with discount 0: the maximum-likelihood unigram (symbol frequencies)
    unigram = np.bincount(x[x >= 0], minlength=27) / (x >= 0).sum()
    got = genbook.KneserNey(x, 0, discount=0.0).probs(np.zeros((1, 0), dtype=np.int64))[0]
    np.testing.assert_allclose(got, unigram, rtol=1e-12)
    # order 1 with discount 0: the counted bigram in every context
    pairs = np.zeros((27, 27))
    padded = np.concatenate([np.zeros((len(x), 1), dtype=np.int64), x], axis=1)
    keep = padded[:, 1:] >= 0
    np.add.at(pairs, (padded[:, :-1][keep], padded[:, 1:][keep]), 1)
    got = genbook.KneserNey(x, 1, discount=0.0).probs(np.arange(27)[:, None])
    np.testing.assert_allclose(got, pairs / pairs.sum(axis=1, keepdims=True), rtol=1e-12)
    # any order, any discount in (0, 1]: every symbol possible, rows sum to 1, even for
    # contexts never seen in training; nll is the mean of -ln p at the validation targets
    rng = np.random.default_rng(0)
    for order, d in [(2, 0.5), (7, 0.9)]:
        model = genbook.KneserNey(x, order, discount=d)
        contexts, targets = model.contexts_and_targets(x_val, order)
        contexts = np.concatenate([contexts[:500], rng.integers(0, 27, size=(500, order))])
        p = model.probs(contexts)
        assert p.shape == (1000, 27) and (p > 0).all()
        np.testing.assert_allclose(p.sum(axis=1), 1, rtol=1e-12)
        first = model.contexts_and_targets(x_val[:300], order)
        expected = -np.log(model.probs(first[0])[np.arange(len(first[1])), first[1]]).mean()
        assert model.nll(x_val[:300]) == pytest.approx(expected, rel=1e-12)
    with pytest.raises(ValueError):
        genbook.KneserNey(x, 1, discount=1.5)
