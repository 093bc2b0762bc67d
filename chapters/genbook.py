"""Shared helpers for the book's notebooks: set-up, data, plots and evaluation.

Everything that several chapters need lives here, once: seeding and device
choice, finding and checking Fashion-MNIST, the house plot style, image grids,
a pixel-space Gaussian baseline, and the feature classifier behind the
Fréchet distance. A model's own code is written out in the chapter that
teaches it.

Run ``python chapters/genbook.py data`` to fetch and check the data set.
"""
from __future__ import annotations

import gzip
import hashlib
import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

__all__ = [
    "CLASSES", "DataError", "setup", "pick_device", "data_root", "ensure_fashion_mnist",
    "load_fashion_mnist", "set_style", "show_images", "PixelGaussian",
    "feature_classifier", "features", "frechet_distance", "fit_gaussian_stats", "glue",
    "format_value", "mlp", "read_names", "split_names", "names_checksum", "ALPHABET",
    "encode_names", "KneserNey", "MLPVAE", "book_scale", "frechet_to_test", "frechet_distance_to_stats",
    "balanced_labels", "N_EVAL", "RING_K", "RING_RADIUS", "RING_STD", "ring_centres", "sample_ring",
    "mode_report", "save_model", "load_model", "train_vae", "DCGANGenerator", "train_dcgan",
]

#: Fashion-MNIST's ten classes, in label order.
CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
           "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]

#: SHA-256 of the four decompressed files, as torchvision keeps them in ``FashionMNIST/raw``.
FASHION_MNIST_SHA256 = {
    "train-images-idx3-ubyte": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
    "train-labels-idx1-ubyte": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
    "t10k-images-idx3-ubyte": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
    "t10k-labels-idx1-ubyte": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
}
#: Where Debian's ``dataset-fashion-mnist`` package puts the compressed files.
DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")

HOW_TO_GET_DATA = """\
Fashion-MNIST is missing or damaged in {raw}.
Problem: {problem}
To fix it, do one of these, then run the notebook again:
  * with internet access: delete {raw} and run `make data` (torchvision downloads it);
  * offline on Debian or Ubuntu: `sudo apt-get install dataset-fashion-mnist`, then `make data`;
  * by hand: put the four decompressed files {names} in {raw}.
The book never substitutes other data."""


class DataError(RuntimeError):
    """The data set is missing or does not match its checksums."""


# ---------------------------------------------------------------- set-up

_START = time.perf_counter()


def pick_device():
    """The fastest device present: CUDA, then Apple's MPS, then the CPU."""
    import torch
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def setup(seed: int = 0, style: bool = True):
    """Seed every generator, set the CPU thread count and the plot style; return the device.

    The thread count comes from ``GENBOOK_THREADS`` when it is set (the test run sets it),
    otherwise torch keeps its default.
    """
    import torch
    global _START
    _START = time.perf_counter()
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True
    threads = os.environ.get("GENBOOK_THREADS")
    if threads:
        torch.set_num_threads(int(threads))
        try:    # NumPy's and scikit-learn's BLAS too: oversubscribed, its EM ran 30 times slower
            from threadpoolctl import threadpool_limits
            threadpool_limits(int(threads))
        except ImportError:
            pass
    _quiet_progress_bars()
    if style:
        set_style()
    return pick_device()


def _quiet_progress_bars() -> None:
    """Honour TQDM_DISABLE (set by the test run) in notebooks too.

    tqdm's notebook widget ignores the variable and leaves an empty widget in the saved
    outputs; under TQDM_DISABLE, ``from tqdm.auto import tqdm`` gets the plain bar instead,
    which honours it and prints nothing. Readers, who do not set it, keep the widget bars.
    """
    if os.environ.get("TQDM_DISABLE"):
        import tqdm.auto
        import tqdm.autonotebook
        import tqdm.std
        for module in (tqdm.auto, tqdm.autonotebook):
            module.tqdm, module.trange = tqdm.std.tqdm, tqdm.std.trange


def elapsed() -> float:
    """Seconds since :func:`setup` was called: each notebook prints it in its last cell."""
    return time.perf_counter() - _START


# ---------------------------------------------------------------- numbers quoted in the text

def _plain_value(value):
    """A number or string as a plain Python value (NumPy and torch scalars unwrapped)."""
    if hasattr(value, "item") and getattr(value, "ndim", 0) == 0:
        value = value.item()
    if isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"glue() records numbers and strings, not {type(value).__name__}")


def glue(name: str, value) -> None:
    """Record a value that the chapter's text quotes, as one line of output: ``name = value``.

    The Markdown writes the number out, between two HTML comments that name it:
    ``<!--name:.1f-->240.5<!--/-->``. Readers see only ``240.5``; ``tools/prose.py`` rewrites
    the number from this output after every run (``make execute``), and a test fails if the
    text and the recorded value ever disagree. Only the book's check cells call this.
    """
    from IPython.display import display
    display({"text/plain": f"{name} = {_plain_value(value)!r}"}, raw=True)


def format_value(value, spec: str = "") -> str:
    """``value`` written out with a format spec, as the text shows it (``.1f``, ``.0%``, ``,``)."""
    if spec in ("", "md"):
        return str(value)
    kind = spec[-1]
    if kind in "bcdoxX":
        value = int(value)
    elif kind in "eEfFgGn%":
        value = float(value)
    return format(value, spec)


# ---------------------------------------------------------------- data

def data_root() -> Path:
    """The folder that holds ``FashionMNIST/raw``.

    ``GENBOOK_DATA`` wins when set; in a clone of the book it is ``data/`` at the
    repository's root, wherever the notebook runs from; elsewhere (Colab) ``./data``.
    """
    env = os.environ.get("GENBOOK_DATA")
    if env:
        return Path(env).expanduser().resolve()
    repo = Path(__file__).resolve().parent.parent
    if (repo / "_config.yml").exists():
        return repo / "data"
    return Path.cwd() / "data"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def check_fashion_mnist(root: Path | None = None) -> str | None:
    """None when all four files are present and match their SHA-256; else what is wrong."""
    raw = Path(root or data_root()) / "FashionMNIST" / "raw"
    for name, digest in FASHION_MNIST_SHA256.items():
        path = raw / name
        if not path.exists():
            return f"{name} is missing"
        if _sha256(path) != digest:
            return f"{name} does not match its SHA-256 checksum (corrupt or truncated)"
    return None


def _from_debian(raw: Path) -> None:
    raw.mkdir(parents=True, exist_ok=True)
    for name in FASHION_MNIST_SHA256:
        with gzip.open(DEBIAN_DIR / f"{name}.gz", "rb") as src, open(raw / name, "wb") as dst:
            shutil.copyfileobj(src, dst)


def _from_torchvision(root: Path) -> None:
    from torchvision.datasets import FashionMNIST
    for train in (True, False):
        FashionMNIST(root, train=train, download=True)


_CHECKED: dict = {}


def ensure_fashion_mnist(root: Path | None = None, apt: bool = False, log=print) -> Path:
    """Make sure the four checked files are in ``root/FashionMNIST/raw``; return ``root``.

    In order: files already there and matching; torchvision's own download; Debian's
    ``dataset-fashion-mnist`` package (installed with apt-get first when ``apt`` is true
    and we are root). Anything else raises :class:`DataError` saying how to fix it.
    """
    root = Path(root or data_root())
    raw = root / "FashionMNIST" / "raw"
    stamp = tuple((raw / n).stat().st_mtime_ns if (raw / n).exists() else None for n in FASHION_MNIST_SHA256)
    if _CHECKED.get(raw) == stamp and None not in stamp:
        return root  # already checked in this process, and untouched since
    problem = check_fashion_mnist(root)
    if problem is None:
        _CHECKED[raw] = stamp
        return root
    damaged = any((raw / n).exists() for n in FASHION_MNIST_SHA256)
    if damaged:
        # Never train on a damaged copy: set it aside and fetch a fresh one.
        log(f"Fashion-MNIST in {raw}: {problem}; fetching a fresh copy.")
        for n in FASHION_MNIST_SHA256:
            (raw / n).unlink(missing_ok=True)
    attempts = []
    try:
        _from_torchvision(root)
        attempts.append("torchvision download: done")
    except Exception as exc:  # offline: no network
        attempts.append(f"torchvision download failed ({type(exc).__name__})")
    if check_fashion_mnist(root) is not None:
        if not DEBIAN_DIR.exists() and apt and shutil.which("apt-get") and os.geteuid() == 0:
            log("Installing Debian's dataset-fashion-mnist package ...")
            subprocess.run(["apt-get", "install", "-y", "-q", "dataset-fashion-mnist"],
                           check=False, stdout=subprocess.DEVNULL)
        if DEBIAN_DIR.exists():
            try:
                _from_debian(raw)
                attempts.append(f"copied from {DEBIAN_DIR}")
            except OSError as exc:
                attempts.append(f"copy from {DEBIAN_DIR} failed ({exc})")
        else:
            attempts.append("Debian package dataset-fashion-mnist not installed")
    problem = check_fashion_mnist(root)
    if problem is not None:
        raise DataError(HOW_TO_GET_DATA.format(
            raw=raw, problem=f"{problem} (tried: {'; '.join(attempts)})",
            names=", ".join(FASHION_MNIST_SHA256)))
    log(f"Fashion-MNIST ready in {raw} ({attempts[-1]}).")
    return root


def load_fashion_mnist(train: bool = True, root: Path | None = None):
    """Fashion-MNIST as tensors: images ``(N, 1, 28, 28)`` float32 in [0, 1], labels ``(N,)`` int64.

    Goes through ``torchvision.datasets.FashionMNIST(root, download=True)`` after the
    checksums pass, so it is the same data torchvision users get.
    """
    from torchvision.datasets import FashionMNIST
    root = ensure_fashion_mnist(root, log=lambda *_: None)
    ds = FashionMNIST(root, train=train, download=True)
    x = ds.data.unsqueeze(1).float().div_(255.0)
    return x, ds.targets.clone()


# ---------------------------------------------------------------- text data: Census names

#: The 1990 U.S. Census name lists, as the PyPI package ``names`` ships them (public domain).
NAME_FILES = ("dist.all.last", "dist.female.first", "dist.male.first")


def read_names():
    """Every name of the three Census lists, lower-case, each once, sorted; and lines per file.

    Each line of a list reads ``NAME FREQUENCY CUMULATIVE-FREQUENCY RANK``; only the name is
    kept. Chapters 3 and 8 train on these names.
    """
    import names  # the PyPI package that ships the lists; nothing is downloaded
    folder = Path(names.__file__).parent
    words, lines = set(), {}
    for file in NAME_FILES:
        rows = (folder / file).read_text().splitlines()
        lines[file] = len(rows)
        words.update(row.split()[0].lower() for row in rows)
    return sorted(words), lines


def split_names(words, seed: int = 0):
    """Shuffle with a fixed seed, then cut 80/10/10 into training, validation and test lists."""
    words = list(words)
    random.Random(seed).shuffle(words)
    a, b = int(0.8 * len(words)), int(0.9 * len(words))
    return words[:a], words[a:b], words[b:]


#: The symbols of the book's name models: "." (symbol 0) marks the end of a name (and its
#: start, where a model needs one), then the letters a..z (symbols 1..26).
ALPHABET = "." + "abcdefghijklmnopqrstuvwxyz"


def encode_names(words, max_len: int):
    """Names as a (n, max_len + 1) integer array: letters 1..26, the end symbol 0, then -1 padding."""
    x = np.full((len(words), max_len + 1), -1, dtype=np.int64)
    for i, w in enumerate(words):
        x[i, :len(w)] = [ALPHABET.index(c) for c in w]
        x[i, len(w)] = 0
    return x


def names_checksum(words) -> str:
    """The first 16 hex digits of the SHA-256 of the sorted names: two chapters, one split."""
    return hashlib.sha256("\n".join(sorted(words)).encode()).hexdigest()[:16]


class KneserNey:
    """Interpolated Kneser-Ney character n-gram over genbook.ALPHABET (symbol 0 '.' = start/end).

    ``KneserNey(x, order, discount)`` fits a chain that predicts each symbol from the previous
    ``order`` symbols ([Chen and Goodman, 1999], interpolated form, one discount for every
    order). ``x`` holds encoded names as from :func:`encode_names` (letters 1..26, the end
    symbol 0, then -1 padding); each name is preceded by ``order`` start symbols (0), as in
    chapter 3. For a context ``h`` of ``m`` symbols, with ``h'`` the same context without its
    oldest symbol,

        p_m(w | h) = max(a(h, w) - D, 0) / a(h)  +  D * t(h) / a(h) * p_{m-1}(w | h'),

    where ``a(h, w)`` is the count of ``h`` followed by ``w`` at the top order
    (``m == order``) and the *continuation count* at the lower orders (the number of
    different symbols seen just before ``h w``), ``a(h) = sum_w a(h, w)``, ``t(h)`` is the
    number of symbols ``w`` with ``a(h, w) > 0``, and ``p_{-1}`` is uniform over the 27
    symbols. A context with ``a(h) = 0`` (never seen) passes ``p_{m-1}`` on unchanged. With
    ``0 < D <= 1`` every row is positive and sums to 1; with ``D = 0`` the top order is the
    maximum-likelihood (counting) estimate wherever its context was seen.

    The counts do not depend on the discount, which ``prob``, ``probs`` and ``nll`` read from
    ``self.discount``: set that attribute to try another discount without fitting again.
    """

    def __init__(self, x, order: int, discount: float = 0.75):
        if not 0 <= discount <= 1:
            raise ValueError(f"the discount must lie in [0, 1], got {discount}")
        self.order, self.discount = int(order), float(discount)
        self.size = len(ALPHABET)
        contexts, targets = self.contexts_and_targets(x, self.order)
        grams = np.concatenate([contexts, targets[:, None]], axis=1)  # (positions, order + 1)
        # self.levels[m]: the counts for contexts of m symbols, one row per context seen
        self.levels = []
        for m in range(self.order + 1):
            # one integer per pair (h, w) of a context h of m symbols and the symbol w after it
            pairs = self._keys(grams[:, self.order - m:])
            if m < self.order:
                # lower orders count continuations: each *different* (m + 2)-gram (v, h, w)
                # once, then forget v, so that (h, w) counts the different symbols v before it
                longer = np.sort(self._keys(grams[:, self.order - m - 1:]))
                longer = longer[np.r_[True, longer[1:] != longer[:-1]]]  # each different key once
                pairs = longer % self.size ** (m + 1)
            context, symbol = pairs // self.size, pairs % self.size
            known, row = np.unique(context, return_inverse=True)
            cell = row.ravel() * self.size + symbol  # (row of the context, symbol) as one index
            table = np.bincount(cell, minlength=len(known) * self.size).reshape(len(known), self.size)
            table = table.astype(np.int32)  # half the memory of int64; counts stay far below 2**31
            self.levels.append({"contexts": known,                 # sorted keys of the contexts h
                                "counts": table,                   # a(h, w), one row per context
                                "total": table.sum(axis=1),        # a(h)
                                "types": (table > 0).sum(axis=1)})  # t(h)

    @staticmethod
    def contexts_and_targets(x, order: int):
        """Every predicted symbol of encoded names x and the ``order`` symbols before it.

        Returns ``contexts`` (positions, order), oldest first (0 before the start), and
        ``targets`` (positions,): the letters and the end symbol of every name, in order.
        """
        x = np.asarray(x, dtype=np.int64)
        padded = np.concatenate([np.zeros((len(x), order), dtype=np.int64), x], axis=1)
        width = x.shape[1]
        keep = x >= 0
        contexts = np.zeros((int(keep.sum()), order), dtype=np.int64)
        for j in range(order):
            contexts[:, j] = padded[:, j:j + width][keep]
        return contexts, x[keep]

    def _keys(self, contexts):
        """One integer per context (base 27, oldest symbol first)."""
        key = np.zeros(len(contexts), dtype=np.int64)
        for j in range(contexts.shape[1]):
            key = key * self.size + contexts[:, j]
        return key

    def prob(self, contexts, symbols) -> np.ndarray:
        """p(symbols[i] | contexts[i]) for contexts (n, order) and symbols (n,): shape (n,)."""
        contexts = np.asarray(contexts, dtype=np.int64)
        symbols = np.asarray(symbols, dtype=np.int64)
        if contexts.ndim != 2 or contexts.shape[1] != self.order:
            raise ValueError(f"contexts must have shape (n, {self.order}), got {contexts.shape}")
        d = self.discount
        p = np.full(len(symbols), 1.0 / self.size)  # p_{-1}: uniform
        for m, level in enumerate(self.levels):
            key = self._keys(contexts[:, self.order - m:])  # the newest m symbols
            i = np.minimum(np.searchsorted(level["contexts"], key), len(level["contexts"]) - 1)
            seen = level["contexts"][i] == key
            a = level["counts"][i, symbols]
            total, types = level["total"][i], level["types"][i]
            mixed = (np.maximum(a - d, 0) + d * types * p) / np.maximum(total, 1)
            p = np.where(seen, mixed, p)  # an unseen context passes p_{m-1} on
        return p

    def probs(self, contexts) -> np.ndarray:
        """Next-symbol distributions, shape (n, 27), for contexts of shape (n, order)."""
        contexts = np.asarray(contexts, dtype=np.int64)
        n = len(contexts)
        every = np.repeat(contexts, self.size, axis=0)  # (n * 27, order): each context 27 times
        symbols = np.tile(np.arange(self.size), n)      # (n * 27,): symbols 0..26 for each
        return self.prob(every, symbols).reshape(n, self.size)

    def nll(self, x) -> float:
        """Mean negative log-likelihood, in nats per predicted symbol, of encoded names x."""
        contexts, targets = self.contexts_and_targets(x, self.order)
        return float(-np.log(self.prob(contexts, targets)).mean())


# ---------------------------------------------------------------- the ring of Gaussians (chapters 6 and 9)

RING_K, RING_RADIUS, RING_STD = 8, 2.0, 0.05   # eight modes of standard deviation 0.05 on a circle of radius 2


def ring_centres():
    """The ring's eight centres, shape (8, 2)."""
    import torch
    angles = 2 * np.pi * torch.arange(RING_K) / RING_K
    return RING_RADIUS * torch.stack([angles.cos(), angles.sin()], 1)


def sample_ring(n: int, gen):
    """n points of the ring: a centre chosen uniformly at random, plus N(0, RING_STD^2 I) noise."""
    import torch
    k = torch.randint(0, RING_K, (n,), generator=gen)
    return ring_centres()[k] + RING_STD * torch.randn(n, 2, generator=gen)


def mode_report(x, min_share: float = 0.04):
    """Chapter 6's count of modes for points x (N, 2): (modes covered, share of high-quality
    samples, high-quality samples per mode). A sample is of high quality within 3 standard
    deviations of its nearest centre; a mode is covered when it gets at least ``min_share``
    of all samples as high-quality ones."""
    import torch
    dist, nearest = torch.cdist(x.float().cpu(), ring_centres()).min(1)
    good = dist < 3 * RING_STD
    counts = torch.bincount(nearest[good], minlength=RING_K)
    return int((counts >= min_share * len(x)).sum()), float(good.float().mean()), counts


# ---------------------------------------------------------------- networks

def mlp(sizes):
    """A multilayer perceptron: ``nn.Linear`` layers of the given sizes, ReLU between them
    (none after the last), e.g. ``mlp([784, 512, 32])``."""
    import torch.nn as nn
    layers = []
    for a, b in zip(sizes[:-1], sizes[1:]):
        layers += [nn.Linear(a, b), nn.ReLU()]
    return nn.Sequential(*layers[:-1])


def MLPVAE(z_dim: int = 32, hidden=(512, 256)):
    """Chapter 4's VAE, for the chapters that build on it: an MLP encoder from 784 pixels to
    the mean and log-variance of a Gaussian over ``z_dim`` codes (``encode``), an MLP decoder
    from a code to 784 Bernoulli logits (``decoder``), and ``forward`` with the
    reparameterisation trick, returning (logits, mu, logvar). Chapter 4 derives it."""
    import torch
    import torch.nn as nn

    class VAE(nn.Module):
        def __init__(self):
            super().__init__()
            self.z_dim = z_dim
            self.encoder = mlp([784, *hidden, 2 * z_dim])
            self.decoder = mlp([z_dim, *hidden[::-1], 784])

        def encode(self, x):
            mu, logvar = self.encoder(x).chunk(2, dim=-1)
            return mu, logvar

        def forward(self, x):
            mu, logvar = self.encode(x)
            z = mu + (0.5 * logvar).exp() * torch.randn_like(mu)
            return self.decoder(z), mu, logvar

    return VAE()


def train_vae(vae, x, epochs: int, beta: float = 1.0, batch_size: int = 256, lr: float = 3e-3, desc: str = "VAE"):
    """Chapter 4's training, for a chapter that must retrain a VAE it could not load: the decoder
    starts at the mean image, then Adam with a one-cycle schedule on the loss summed BCE + beta KL,
    shuffled batches in a seeded order. Returns ``vae`` in eval mode."""
    import torch
    import torch.nn.functional as F
    from tqdm.auto import tqdm
    with torch.no_grad():
        vae.decoder[-1].bias.copy_(torch.logit(x.mean(0).clamp(1e-3, 1 - 1e-3)))
    opt = torch.optim.Adam(vae.parameters(), lr=lr)
    steps_per_epoch = len(x) // batch_size
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs * steps_per_epoch)
    g = torch.Generator().manual_seed(0)
    vae.train()
    for _ in tqdm(range(epochs), desc=desc):
        perm = torch.randperm(len(x), generator=g).to(x.device)
        for i in range(steps_per_epoch):
            xb = x[perm[i * batch_size:(i + 1) * batch_size]]
            logits, mu, logvar = vae(xb)
            recon = F.binary_cross_entropy_with_logits(logits, xb, reduction="none").sum(-1)
            kl = 0.5 * (mu ** 2 + logvar.exp() - 1 - logvar).sum(-1)
            loss = (recon + beta * kl).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    return vae.eval()


def DCGANGenerator(z_dim: int = 64, width: int = 32, n_classes: int = 10):
    """Chapter 7's class-conditional DCGAN generator, for the chapters that load it: noise and a
    16-dimensional label embedding, a linear layer to 2*width maps of 7x7, then two transposed
    convolutions to 28x28 images in [-1, 1]. Chapter 7 derives and trains it."""
    import torch
    import torch.nn as nn

    class Generator(nn.Module):
        def __init__(self):
            super().__init__()
            self.width = width
            self.embed = nn.Embedding(n_classes, 16)
            self.project = nn.Sequential(nn.Linear(z_dim + 16, 2 * width * 7 * 7),
                                         nn.BatchNorm1d(2 * width * 7 * 7), nn.ReLU())
            self.upsample = nn.Sequential(
                nn.ConvTranspose2d(2 * width, width, 4, 2, 1), nn.BatchNorm2d(width), nn.ReLU(),
                nn.ConvTranspose2d(width, 1, 4, 2, 1), nn.Tanh())

        def forward(self, z, y):
            h = self.project(torch.cat([z, self.embed(y)], dim=1))        # (B, 2 * width * 49)
            return self.upsample(h.view(-1, 2 * self.width, 7, 7))         # (B, 1, 28, 28)

    return Generator()


def train_dcgan(x, y, steps: int = 3000, z_dim: int = 64, width: int = 32, batch: int = 32,
                lr: float = 4e-4, betas=(0.5, 0.999), seed: int = 0):
    """Chapter 7's DCGAN training, for a chapter that must retrain the generator it could not
    load: DCGAN's N(0, 0.02) initialisation, a projection discriminator, the non-saturating
    loss and Adam, ``steps`` updates of ``batch`` images (x in [0, 1], labels y). Returns the
    generator in eval mode."""
    import torch
    import torch.nn as nn
    import torch.nn.functional as F
    from tqdm.auto import tqdm

    class Discriminator(nn.Module):
        def __init__(self):
            super().__init__()
            self.features = nn.Sequential(
                nn.Conv2d(1, width, 4, 2, 1), nn.LeakyReLU(0.2),
                nn.Conv2d(width, 2 * width, 4, 2, 1), nn.LeakyReLU(0.2), nn.Flatten())
            self.psi = nn.Linear(2 * width * 7 * 7, 1)
            self.embed = nn.Embedding(10, 2 * width * 7 * 7)

        def forward(self, images, labels):
            phi = self.features(images)
            return self.psi(phi).squeeze(1) + (self.embed(labels) * phi).sum(1)

    def init(module):
        if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, 0.0, 0.02)
            if getattr(module, "bias", None) is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
            nn.init.normal_(module.weight, 1.0, 0.02)
            nn.init.zeros_(module.bias)

    device = x.device
    torch.manual_seed(seed)
    G = DCGANGenerator(z_dim, width).to(device).apply(init)
    D = Discriminator().to(device).apply(init)
    opt_g = torch.optim.Adam(G.parameters(), lr=lr, betas=betas)
    opt_d = torch.optim.Adam(D.parameters(), lr=lr, betas=betas)
    g = torch.Generator().manual_seed(seed)
    for _ in tqdm(range(steps), desc="DCGAN"):
        idx = torch.randint(len(x), (batch,), generator=g).to(device)
        x_real, y_real = x[idx] * 2 - 1, y[idx]
        x_fake = G(torch.randn(batch, z_dim, device=device), y_real)
        loss_d = F.softplus(-D(x_real, y_real)).mean() + F.softplus(D(x_fake.detach(), y_real)).mean()
        opt_d.zero_grad()
        loss_d.backward()
        opt_d.step()
        loss_g = F.softplus(-D(x_fake, y_real)).mean()
        opt_g.zero_grad()
        loss_g.backward()
        opt_g.step()
    return G.eval()


def save_model(name: str, model, config: dict, seconds: float) -> None:
    """Keep a trained model's weights in the book's data folder for a later chapter.

    ``config`` records what the weights are (sizes, epochs); :func:`load_model` hands them
    back only to a caller that asks for the same config. The folder is not part of the
    repository: a chapter that loads a model must be able to train it itself.
    """
    import torch
    path = data_root() / f"model-{name}.pt"
    path.parent.mkdir(parents=True, exist_ok=True)
    weights = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    torch.save({"config": dict(config), "seconds": float(seconds), "weights": weights}, path)


def load_model(name: str, model, config: dict):
    """Load weights that :func:`save_model` kept into ``model``; return the seconds they took
    to train, or None (and leave ``model`` untouched) when there is no such file, it was
    saved with another config, or it does not fit the model."""
    import torch
    path = data_root() / f"model-{name}.pt"
    if not path.exists():
        return None
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
        weights, own = saved["weights"], model.state_dict()
        if saved["config"] != dict(config) or set(weights) != set(own):
            return None
        if any(weights[k].shape != own[k].shape for k in own):
            return None
    except Exception:                                   # unreadable or not a saved model
        return None
    model.load_state_dict(weights)
    return float(saved["seconds"])


# ---------------------------------------------------------------- plots

def _style_file() -> Path | None:
    here = Path(__file__).resolve().parent
    for candidate in (here.parent / "assets" / "house.mplstyle", here / "house.mplstyle"):
        if candidate.exists():
            return candidate
    return None


def set_style() -> None:
    """The house style: seaborn's theme plus ``assets/house.mplstyle`` (opaque white
    figures that read on the light and the dark page)."""
    import matplotlib.pyplot as plt
    import seaborn as sns
    sns.set_theme(context="notebook", style="whitegrid", palette="colorblind")
    path = _style_file()
    if path is not None:
        plt.style.use(str(path))


def show_images(images, nrow: int = 8, ax=None, title: str | None = None, cmap: str = "gray_r",
                vmin: float = 0.0, vmax: float = 1.0, pad: int = 2):
    """Draw a batch of images ``(N, 1, H, W)`` or ``(N, H, W)`` as one grid on ``ax``."""
    import matplotlib.pyplot as plt
    x = np.asarray(images.detach().cpu() if hasattr(images, "detach") else images, dtype=np.float32)
    if x.ndim == 4:
        x = x[:, 0]
    n, h, w = x.shape
    ncol = min(nrow, n)
    nrows = int(np.ceil(n / ncol))
    grid = np.full((nrows * (h + pad) + pad, ncol * (w + pad) + pad), vmin, dtype=np.float32)
    for i in range(n):
        r, c = divmod(i, ncol)
        grid[pad + r * (h + pad): pad + r * (h + pad) + h, pad + c * (w + pad): pad + c * (w + pad) + w] = x[i]
    if ax is None:
        _, ax = plt.subplots(figsize=(ncol * 0.6, nrows * 0.6))
    ax.imshow(grid, cmap=cmap, vmin=vmin, vmax=vmax, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.grid(False)
    if title:
        ax.set_title(title)
    return ax


# ---------------------------------------------------------------- a pixel-space baseline

class PixelGaussian:
    """One multivariate Gaussian over flattened pixels, or one per class when fitted with labels.

    ``shrink`` adds that much variance to the diagonal, which keeps the covariance positive
    definite (a few border pixels are almost always 0). Used as the first point on the book's
    sample-quality scale.
    """

    def __init__(self, shrink: float = 1e-3):
        self.shrink = shrink

    def fit(self, x, y=None):
        import torch
        x = torch.as_tensor(x).reshape(len(x), -1)
        labels = torch.zeros(len(x), dtype=torch.long) if y is None else torch.as_tensor(y)
        self.classes_ = torch.unique(labels)
        self.means_, self.chols_, self.priors_ = [], [], []
        d = x.shape[1]
        for k in self.classes_:
            idx = (labels == k).nonzero().flatten()
            # Sums of x and x x^T in float64, a block of rows at a time: the same maximum-
            # likelihood mean and covariance as torch.cov(correction=0), in far less memory
            # than a float64 copy of the whole data set (Binder has 2 GB).
            total = torch.zeros(d, dtype=torch.float64)
            outer = torch.zeros(d, d, dtype=torch.float64)
            for i in range(0, len(idx), 5000):
                block = x[idx[i:i + 5000]].double()
                total += block.sum(0)
                outer += block.T @ block
            mu = total / len(idx)
            cov = outer / len(idx) - torch.outer(mu, mu) + self.shrink * torch.eye(d, dtype=torch.float64)
            self.means_.append(mu)
            self.chols_.append(torch.linalg.cholesky(cov))
            self.priors_.append(len(idx) / len(x))
        return self

    def sample(self, n: int, y=None, generator=None):
        """``n`` samples (per class in ``y`` when given), clipped to [0, 1], shaped like images."""
        import torch
        if y is None:
            y = torch.multinomial(torch.tensor(self.priors_), n, replacement=True, generator=generator)
        y = torch.as_tensor(y)
        out = torch.empty(len(y), self.means_[0].numel(), dtype=torch.float64)
        for i, k in enumerate(self.classes_.tolist()):
            idx = (y == k).nonzero().flatten()
            z = torch.randn(len(idx), out.shape[1], dtype=torch.float64, generator=generator)
            out[idx] = self.means_[i] + z @ self.chols_[i].T
        side = int(round(out.shape[1] ** 0.5))
        return out.clamp(0, 1).float().reshape(len(y), 1, side, side), y

    def log_prob(self, x):
        """Log-density of each row of ``x`` under the (mixture of) Gaussian(s), in nats."""
        import torch
        from torch.distributions import MultivariateNormal
        x = torch.as_tensor(x).reshape(len(x), -1).double()
        parts = [MultivariateNormal(m, scale_tril=L).log_prob(x) + np.log(p)
                 for m, L, p in zip(self.means_, self.chols_, self.priors_)]
        return torch.logsumexp(torch.stack(parts), 0)


# ---------------------------------------------------------------- evaluation

def _classifier_net():
    import torch.nn as nn
    return nn.Sequential(
        nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(64 * 7 * 7, 128), nn.ReLU(),
        nn.Dropout(0.2), nn.Linear(128, 10),
    )


_CLASSIFIER_VERSION = "cnn-v2-e2-deterministic"


def _file_digest(path: Path) -> str:
    return _sha256(path)[:12]


def feature_classifier(epochs: int = 2, seed: int = 0, cache: bool = True):
    """The book's evaluation classifier for Fashion-MNIST (a small CNN, about 89% test accuracy).

    Its 128 penultimate features define the Fréchet distance used to compare every image
    model of the book on one scale; its predictions count which classes samples fall in.
    It is trained here on the CPU, never downloaded, and kept in ``data/`` as a state dict
    (loaded with ``weights_only=True``) so that later chapters reuse the same network.

    Training is deterministic: its own seeded random-number generators (the caller's are
    left as they were), one CPU thread and PyTorch's deterministic algorithms, so two runs
    on one machine give the same weights bit for bit (``tests/test_genbook.py`` checks).
    Returns the network in eval mode on the CPU, and its test accuracy.
    """
    import torch
    path = data_root() / f"feature-classifier-{_CLASSIFIER_VERSION}-s{seed}.pt"
    if cache and path.exists():
        net = _classifier_net()
        saved = torch.load(path, weights_only=True)
        net.load_state_dict(saved["state_dict"])
        net.eval()
        return net, float(saved["test_accuracy"])
    net, acc = _train_classifier(epochs, seed)
    if cache:
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"state_dict": net.state_dict(), "test_accuracy": acc}, path)
    return net, acc


def _train_classifier(epochs: int, seed: int):
    import torch
    import torch.nn.functional as F
    from tqdm.auto import tqdm
    x, y = load_fashion_mnist(train=True)
    xt, yt = load_fashion_mnist(train=False)
    threads = torch.get_num_threads()
    was_deterministic = torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    try:
        with torch.random.fork_rng(devices=[]):      # the caller's random stream is untouched
            torch.manual_seed(seed)                  # initial weights and dropout masks
            g = torch.Generator().manual_seed(seed)  # the order of the examples
            net = _classifier_net()
            net.train()
            opt = torch.optim.Adam(net.parameters(), lr=1e-3)
            for epoch in range(epochs):
                perm = torch.randperm(len(x), generator=g)
                for i in tqdm(range(0, len(x), 128), desc=f"classifier epoch {epoch + 1}", leave=False):
                    idx = perm[i:i + 128]
                    loss = F.cross_entropy(net(x[idx]), y[idx])
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
        net.eval()
        with torch.no_grad():
            correct = sum(int((net(xt[i:i + 1000]).argmax(1) == yt[i:i + 1000]).sum())
                          for i in range(0, len(xt), 1000))
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(was_deterministic)
    return net, correct / len(xt)


def features(net, images, batch_size: int = 250):
    """Penultimate-layer features (N, 128) and predicted classes (N,) for images in [0, 1].

    Small batches keep the convolutions' intermediate activations (about 1 MB per image)
    well inside Binder's 2 GB. The results go straight into arrays allocated up front:
    collecting small per-batch tensors in a list, between the large short-lived ones,
    fragments the heap and held on to hundreds of MB after the call.
    """
    import torch
    body, head = net[:-1], net[-1]
    feats = torch.empty(len(images), head.in_features, dtype=torch.float64)
    preds = torch.empty(len(images), dtype=torch.long)
    with torch.no_grad():
        for i in range(0, len(images), batch_size):
            f = body(images[i:i + batch_size].float().cpu())
            feats[i:i + len(f)] = f
            preds[i:i + len(f)] = head(f).argmax(1)
    return feats.numpy(), preds.numpy()


def fit_gaussian_stats(feats):
    """Mean and covariance of a feature matrix: the two numbers a Fréchet distance compares."""
    feats = np.asarray(feats, dtype=np.float64)
    return feats.mean(0), np.cov(feats, rowvar=False)


def frechet_distance(a, b) -> float:
    """Fréchet distance between Gaussians fitted to two feature matrices (rows are samples).

    d^2 = |mu_a - mu_b|^2 + Tr(S_a + S_b - 2 (S_a^1/2 S_b S_a^1/2)^1/2), computed with
    symmetric eigendecompositions, which stay real and stable.
    """
    mu_b, s_b = fit_gaussian_stats(b)
    return frechet_distance_to_stats(a, mu_b, s_b)


def frechet_distance_to_stats(a, mu_b, s_b) -> float:
    """Fréchet distance between the Gaussian fitted to features ``a`` and N(mu_b, s_b)."""
    mu_a, s_a = fit_gaussian_stats(a)
    w, v = np.linalg.eigh(s_a)
    root_a = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    inner = np.linalg.eigvalsh(root_a @ s_b @ root_a)
    trace_sqrt = np.sqrt(np.clip(inner, 0, None)).sum()
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(s_a) + np.trace(s_b) - 2 * trace_sqrt)


# ---------------------------------------------------------------- the book's scale, once

_SCALE_VERSION = "scale-v1"
N_EVAL = 10_000          # images per Fréchet distance on the book's scale
_FLOOR_DRAWS = 6         # disjoint sets of 10,000 training images: all 60,000
_BASELINE_DRAWS = 5      # fresh sets of 10,000 samples from the per-class pixel Gaussian


def balanced_labels(n: int = N_EVAL):
    """Labels 0, 0, ..., 1, 1, ..., 9: n // 10 of each class, as in the test set."""
    import torch
    return torch.arange(10).repeat_interleave(n // 10)


class Scale(dict):
    """The book's sample-quality scale (a dict with attribute access), see ``book_scale``."""
    __getattr__ = dict.__getitem__


def book_scale(cache: bool = True) -> Scale:
    """The book's sample-quality scale, computed once and shared by every chapter.

    The Fréchet distance of a set of images is measured in the features of the evaluation
    classifier against the 10,000 real test images. This returns, for that classifier:

    - ``test_mean``, ``test_cov``: the test set's feature statistics;
    - ``floor``, ``floor_draws``: the distance of 10,000 real *training* images, for each of
      the six disjoint sets of 10,000 (what a perfect model would score: not zero, since a
      finite sample never matches exactly), and their mean;
    - ``baseline``, ``baseline_draws``: the same for five fresh draws of 10,000 samples from
      the per-class pixel Gaussian of chapter 2 (1,000 per class), the book's baseline;
    - ``accuracy``: the classifier's test accuracy; ``classifier``: its file's digest.

    It is computed in about a minute and kept in ``data/`` next to the classifier, keyed by
    the classifier's digest and a version, so every chapter quotes the same numbers.
    """
    import torch
    net, acc = feature_classifier()
    path = data_root() / f"feature-classifier-{_CLASSIFIER_VERSION}-s0.pt"
    digest = _file_digest(path) if path.exists() else "uncached"
    out = data_root() / f"book-scale-{_SCALE_VERSION}-{digest}.npz"
    if cache and out.exists():
        with np.load(out) as saved:
            return Scale({k: (saved[k] if saved[k].ndim else saved[k].item()) for k in saved.files})
    x_test, _ = load_fashion_mnist(train=False)
    test_feats, _ = features(net, x_test)
    x_train, y_train = load_fashion_mnist(train=True)
    floors = [frechet_distance(features(net, x_train[i * N_EVAL:(i + 1) * N_EVAL])[0], test_feats)
              for i in range(_FLOOR_DRAWS)]
    gauss = PixelGaussian().fit(x_train, y_train)
    baselines = []
    for draw in range(_BASELINE_DRAWS):
        g = torch.Generator().manual_seed(draw)
        images, _ = gauss.sample(N_EVAL, y=balanced_labels(), generator=g)
        baselines.append(frechet_distance(features(net, images)[0], test_feats))
    mean, cov = fit_gaussian_stats(test_feats)
    scale = Scale(test_mean=mean, test_cov=cov, floor=float(np.mean(floors)), floor_draws=np.array(floors),
                  baseline=float(np.mean(baselines)), baseline_draws=np.array(baselines),
                  accuracy=acc, classifier=digest)
    if cache and digest != "uncached":
        np.savez(out, **scale)
    return scale


def frechet_to_test(images, net=None):
    """Fréchet distance of images in [0, 1], shape (N, 1, 28, 28), to the test set on the
    book's scale, and the classes the evaluation classifier predicts for them."""
    scale = book_scale()
    net = net if net is not None else feature_classifier()[0]
    feats, preds = features(net, images.reshape(-1, 1, 28, 28).cpu())
    return frechet_distance_to_stats(feats, scale.test_mean, scale.test_cov), preds


# ---------------------------------------------------------------- command line

def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["data"]:
        try:
            root = ensure_fashion_mnist(apt=True)
        except DataError as exc:
            print(exc, file=sys.stderr)
            return 1
        print(f"Fashion-MNIST checked (SHA-256) in {root / 'FashionMNIST' / 'raw'}")
        return 0
    if argv[:1] == ["classifier"]:
        threads = os.environ.get("GENBOOK_THREADS")
        if threads:
            import torch
            torch.set_num_threads(int(threads))
        scale = book_scale()
        print(f"Evaluation classifier and the book's scale ready in {data_root()} (test accuracy "
              f"{scale.accuracy:.4f}, floor {scale.floor:.2f}, baseline {scale.baseline:.2f})")
        return 0
    print("usage: python chapters/genbook.py data|classifier", file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
