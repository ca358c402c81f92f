"""Toy problems: small, seeded, known-answer tasks that train in seconds on a CPU.

A toy problem answers "does my idea (or my training code) work at all?" before
any time is spent on real data: its answer is known, so a model that falls
short of it points at the code, not at the data. Each builder returns a `Toy`
holding train/valid/test datasets, a factory for a suitable small model, the
validation accuracy that model reaches (`expected`) with `epochs` epochs of
`dltips.fit` at learning rate `lr`, and the best constant predictor's accuracy
(`baseline`), so a test can tell "learned" from "predicts the majority".

    toy = spirals()
    dltips.fit(toy.task(), toy.epochs, recipe=dltips.Recipe(lr=toy.lr))

`messy_categories` is tabular with string categories, which are not tensors:
it returns a `MessyTable` of numpy arrays and Python strings instead of a Toy.

Splits are 60% train, 20% valid, 20% test, from a seeded permutation. Every
builder draws from its own generator seeded by `seed`, never from the global
random state, so equal arguments give equal data.
"""

from __future__ import annotations

import math
import unicodedata
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset, TensorDataset

from dltips.core.params import ParamError, int_at_least, number
from dltips.task import IGNORE_INDEX, Task

__all__ = [
    "CATEGORIES",
    "MESSINESS",
    "SEPARATOR",
    "SHAPES",
    "MessyTable",
    "ShapesCNN",
    "TinyTransformer",
    "Toy",
    "copy_sequence",
    "messy_categories",
    "moons",
    "reverse_sequence",
    "shapes",
    "spirals",
]

SHAPES = ("circle", "square", "triangle")
SEPARATOR = 0  # the token between a sequence's random prefix and its copy
_SPLIT = (0.6, 0.2)  # train and valid fractions; the test set gets the rest


@dataclass
class Toy:
    """A toy problem: datasets, a model factory, and the accuracy that model reaches.

    `expected` is the validation accuracy (the `metric` of `dltips.evaluate`)
    reached by `model()` after `dltips.fit(toy.task(), toy.epochs,
    recipe=Recipe(lr=toy.lr))`, measured with the default arguments and a
    little below the typical value; `baseline` is the validation accuracy of
    the best constant prediction. `extras` holds side information by name,
    e.g. the masks of `shapes` as `extras["masks"][split]`.
    """

    name: str
    train: Dataset
    valid: Dataset
    test: Dataset
    kind: str
    n_classes: int
    model: Callable[[], nn.Module]
    expected: float
    baseline: float
    epochs: int
    lr: float | None = None
    batch_size: int = 64
    metric: str = "valid_accuracy"
    extras: dict[str, Any] = field(default_factory=dict)

    def task(self, **overrides: Any) -> Task:
        """A fresh `dltips.Task` over this toy's data with a newly built model; keyword arguments replace fields."""
        fields = dict(model=self.model(), train=self.train, valid=self.valid, test=self.test, kind=self.kind,
                      n_classes=self.n_classes, batch_size=self.batch_size, name=self.name)
        return Task(**{**fields, **overrides})


# Shared helpers -----------------------------------------------------------------------------------------


def _split_indices(n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Train, valid and test index tensors from a seeded permutation of range(n)."""
    order = torch.randperm(n, generator=generator)
    n_train, n_valid = int(n * _SPLIT[0]), int(n * _SPLIT[1])
    return order[:n_train], order[n_train:n_train + n_valid], order[n_train + n_valid:]


def _splits(*tensors: torch.Tensor, generator: torch.Generator) -> tuple[TensorDataset, TensorDataset, TensorDataset]:
    parts = _split_indices(len(tensors[0]), generator)
    return tuple(TensorDataset(*(t[i] for t in tensors)) for i in parts)  # type: ignore[return-value]


def _majority_accuracy(y: torch.Tensor) -> float:
    """Accuracy of always predicting the most common target (IGNORE_INDEX targets not counted)."""
    y = y[y != IGNORE_INDEX]
    return float(torch.bincount(y.flatten()).max()) / y.numel()


def _seeded(build: Callable[[], nn.Module], seed: int) -> Callable[[], nn.Module]:
    """A factory whose models start from the same weights every call, leaving the global RNG alone."""

    def model() -> nn.Module:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return build()

    return model


def _balanced_labels(n: int, n_classes: int, generator: torch.Generator) -> torch.Tensor:
    """n labels with every class as frequent as possible (counts differ by at most one), shuffled."""
    labels = torch.arange(n) % n_classes
    return labels[torch.randperm(n, generator=generator)]


def mlp(n_in: int, n_out: int, width: int = 64) -> nn.Sequential:
    """Two hidden layers of `width` ReLU units: enough for the 2-D toys."""
    return nn.Sequential(nn.Linear(n_in, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(), nn.Linear(width, n_out))


# 2-D classification -------------------------------------------------------------------------------------


def spirals(n: int = 1500, arms: int = 3, noise: float = 0.05, seed: int = 0) -> Toy:
    """Points on `arms` interleaved spirals (one turn each, radius 0.1 to 1); the label is the arm.

    Not linearly separable: a linear model stays near 1/arms. Gaussian `noise`
    (std, in units of the outer radius) blurs the arms; above about 0.1 they
    overlap and no model reaches `expected`. With the defaults an MLP (two
    hidden layers of 64) reaches 0.98 to 0.99 in 20 epochs (about 1 s on one
    CPU thread); the majority class gets about 0.35.
    """
    int_at_least("n", n, 10)
    int_at_least("arms", arms, 2, 12)
    number("noise", noise, 0.0, 1.0)
    generator = torch.Generator().manual_seed(seed)
    y = _balanced_labels(n, arms, generator)
    t = 0.1 + 0.9 * torch.rand(n, generator=generator)
    angle = 2 * math.pi * (y / arms + t)
    x = torch.stack([t * torch.cos(angle), t * torch.sin(angle)], 1)
    x = x + noise * torch.randn(n, 2, generator=generator)
    train, valid, test = _splits(x, y, generator=generator)
    return Toy(f"spirals-{arms}", train, valid, test, "classification", arms, _seeded(lambda: mlp(2, arms), seed),
               expected=0.95, baseline=_majority_accuracy(valid.tensors[1]), epochs=20, lr=1e-2)


def moons(n: int = 1000, noise: float = 0.2, seed: int = 0) -> Toy:
    """Two interleaved half circles (as scikit-learn's make_moons), centred; the label is the moon.

    With `noise` 0.2 the moons overlap a little: the best possible accuracy is
    about 0.97 and a linear model gets about 0.86. An MLP (two hidden layers of
    64) reaches 0.96 to 0.99 in 10 epochs (about 0.6 s on one CPU thread).
    """
    int_at_least("n", n, 10)
    number("noise", noise, 0.0, 1.0)
    generator = torch.Generator().manual_seed(seed)
    y = _balanced_labels(n, 2, generator)
    t = math.pi * torch.rand(n, generator=generator)
    upper = torch.stack([torch.cos(t), torch.sin(t)], 1)
    lower = torch.stack([1 - torch.cos(t), 0.5 - torch.sin(t)], 1)
    x = torch.where(y[:, None] == 0, upper, lower) - torch.tensor([0.5, 0.25])
    x = x + noise * torch.randn(n, 2, generator=generator)
    train, valid, test = _splits(x, y, generator=generator)
    return Toy("moons", train, valid, test, "classification", 2, _seeded(lambda: mlp(2, 2), seed),
               expected=0.93, baseline=_majority_accuracy(valid.tensors[1]), epochs=10, lr=1e-2)


# Images -------------------------------------------------------------------------------------------------


class ShapesCNN(nn.Sequential):
    """Three 3x3 convolutions with BatchNorm, then a global max pool: works at any image size."""

    def __init__(self, n_classes: int, width: int = 8):
        super().__init__(
            nn.Conv2d(1, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.BatchNorm2d(2 * width), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(2 * width, 2 * width, 3, padding=1), nn.BatchNorm2d(2 * width), nn.ReLU(),
            nn.AdaptiveMaxPool2d(1), nn.Flatten(), nn.Linear(2 * width, n_classes),
        )


def _shape_masks(kinds: torch.Tensor, names: tuple[str, ...], size: int, generator: torch.Generator) -> torch.Tensor:
    """(N, size, size) bool masks: shape `names[kinds[i]]` at a random centre, scale and rotation.

    Every shape fits in a circle of radius R (0.25 to 0.45 of the image size)
    that lies inside the image.
    """
    n = len(kinds)
    radius = size * (0.25 + 0.2 * torch.rand(n, generator=generator))
    centre = radius[:, None] + (size - 2 * radius[:, None]) * torch.rand(n, 2, generator=generator)
    theta = 2 * math.pi * torch.rand(n, generator=generator)
    pixels = torch.arange(size, dtype=torch.float32) + 0.5
    dx = pixels[None, None, :] - centre[:, 0, None, None]  # (N, 1, size): columns
    dy = pixels[None, :, None] - centre[:, 1, None, None]  # (N, size, 1): rows
    cos, sin = torch.cos(theta)[:, None, None], torch.sin(theta)[:, None, None]
    u, v = dx * cos + dy * sin, -dx * sin + dy * cos  # coordinates in the shape's rotated frame
    r = radius[:, None, None]
    masks = torch.zeros(n, size, size, dtype=torch.bool)
    for k, name in enumerate(names):
        if name == "circle":
            inside = u**2 + v**2 <= (0.8 * r) ** 2
        elif name == "square":
            inside = (u.abs() <= r / math.sqrt(2)) & (v.abs() <= r / math.sqrt(2))
        else:  # triangle: equilateral, circumradius r, so inradius r / 2
            inside = torch.ones_like(masks)
            for j in range(3):
                phi = 2 * math.pi * j / 3
                inside = inside & (u * math.cos(phi) + v * math.sin(phi) <= r / 2)
        masks |= inside & (kinds == k)[:, None, None]
    return masks


def shapes(n: int = 1500, size: int = 32, shapes: tuple[str, ...] = SHAPES, noise: float = 0.1, seed: int = 0) -> Toy:
    """Grey images of one filled shape on a noisy background; the label is the shape's index in `shapes`.

    Images are (1, size, size) floats in [0, 1]: a background level in
    [0.1, 0.4], the shape 0.3 to 0.6 brighter, plus Gaussian pixel `noise`
    (std), clipped. Position, scale (0.25 to 0.45 of the image) and rotation
    are uniform at random. `extras["masks"][split]` holds the (N, size, size)
    bool mask of each image's shape (same order as the split's items), for
    segmentation or for checking a transform moves masks with images.

    With the defaults `ShapesCNN` (width 8) reaches 0.96 to 0.99 in 8 epochs
    (3 to 5 s on one CPU thread); the majority class gets about 0.35.
    """
    int_at_least("n", n, 10)
    int_at_least("size", size, 16, 128)
    number("noise", noise, 0.0, 1.0)
    names = tuple(shapes) if not isinstance(shapes, str) else (shapes,)
    unknown = [s for s in names if s not in SHAPES]
    if unknown or len(set(names)) != len(names) or len(names) < 2:
        raise ParamError(f"shapes must be at least two distinct names from {SHAPES}; got {shapes!r}")
    generator = torch.Generator().manual_seed(seed)
    y = _balanced_labels(n, len(names), generator)
    masks = _shape_masks(y, names, size, generator)
    background = 0.1 + 0.3 * torch.rand(n, 1, 1, generator=generator)
    contrast = 0.3 + 0.3 * torch.rand(n, 1, 1, generator=generator)
    images = background + contrast * masks + noise * torch.randn(n, size, size, generator=generator)
    x = images.clamp(0, 1).unsqueeze(1)
    parts = _split_indices(n, generator)
    train, valid, test = (TensorDataset(x[i], y[i]) for i in parts)
    split_masks = dict(zip(("train", "valid", "test"), (masks[i] for i in parts)))
    k = len(names)
    return Toy(f"shapes-{size}", train, valid, test, "classification", k, _seeded(lambda: ShapesCNN(k), seed),
               expected=0.93, baseline=_majority_accuracy(valid.tensors[1]), epochs=8, lr=1e-2,
               extras={"masks": split_masks, "shapes": names})


# Sequences ----------------------------------------------------------------------------------------------


class TinyTransformer(nn.Module):
    """A causal transformer over tokens: (N, L) ids -> (N, L, vocab) next-token logits.

    Learned absolute positions (up to `max_len`), pre-norm blocks, no dropout.
    Position i sees tokens 0..i only, so it cannot read the token it predicts.
    """

    def __init__(self, vocab: int, max_len: int, dim: int = 32, heads: int = 2, layers: int = 1):
        super().__init__()
        self.max_len = max_len
        self.embed = nn.Embedding(vocab, dim)
        self.position = nn.Parameter(0.02 * torch.randn(max_len, dim))
        block = nn.TransformerEncoderLayer(dim, heads, 4 * dim, dropout=0.0, batch_first=True, norm_first=True)
        self.blocks = nn.TransformerEncoder(block, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, vocab)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        length = tokens.shape[1]
        if length > self.max_len:
            raise ParamError(f"sequences of {length} tokens are longer than max_len={self.max_len}")
        mask = nn.Transformer.generate_square_subsequent_mask(length, device=tokens.device)
        h = self.embed(tokens) + self.position[:length]
        return self.head(self.norm(self.blocks(h, mask=mask, is_causal=True)))


def _sequence_toy(name: str, n: int, length: int, vocab: int, seed: int, reverse: bool) -> Toy:
    int_at_least("n", n, 10)
    int_at_least("length", length, 1, 256)
    int_at_least("vocab", vocab, 3, 100_000)
    generator = torch.Generator().manual_seed(seed)
    prefix = torch.randint(1, vocab, (n, length), generator=generator)
    answer = prefix.flip(1) if reverse else prefix
    sequence = torch.cat([prefix, torch.full((n, 1), SEPARATOR), answer], 1)  # (n, 2 * length + 1)
    x, y = sequence[:, :-1].clone(), sequence[:, 1:].clone()
    y[:, :length] = IGNORE_INDEX  # the rest of the random prefix, and the separator that closes it
    train, valid, test = _splits(x, y, generator=generator)
    return Toy(name, train, valid, test, "language-model", vocab,
               _seeded(lambda: TinyTransformer(vocab, 2 * length), seed),
               expected=0.95, baseline=_majority_accuracy(valid.tensors[1]), epochs=10, lr=1e-2)


def copy_sequence(n: int = 2000, length: int = 8, vocab: int = 10, seed: int = 0) -> Toy:
    """Language-model copying: after `length` random tokens and a separator, the same tokens again.

    Layout, for a prefix a1..aL of tokens drawn uniformly from 1..vocab-1 and
    the separator token 0: the full sequence is `a1..aL 0 a1..aL`; x is all but
    its last token and y all but its first (both 2L long). y[:L] (the rest of
    the prefix, and the separator) is IGNORE_INDEX (-100): only the L copied
    targets y[L:] count, and they are predictable from x. Chance is
    1/(vocab-1). `n_classes` is `vocab`, separator included.

    With the defaults `TinyTransformer` (one causal layer, dim 32) reaches
    0.999 to 1.0 accuracy on the counted targets in 10 epochs (about 2 s on one
    CPU thread); the most common token gets about 0.12.
    """
    return _sequence_toy("copy", n, length, vocab, seed, reverse=False)


def reverse_sequence(n: int = 2000, length: int = 8, vocab: int = 10, seed: int = 0) -> Toy:
    """Language-model reversal: after `length` random tokens and a separator, the same tokens reversed.

    Same layout as `copy_sequence` (sequence `a1..aL 0 aL..a1`, y[:L] is
    IGNORE_INDEX), same model and budget; 0.999 to 1.0 accuracy.
    """
    return _sequence_toy("reverse", n, length, vocab, seed, reverse=True)


# Tabular with messy categories --------------------------------------------------------------------------

CATEGORIES = (
    "Main Street", "Oak Avenue", "Mill Road", "Sunset Boulevard",
    "Saint Mary Lane", "Café Royal Court", "Zürich Place", "North Park Drive",
)
_ABBREVIATIONS = {
    "Street": "St.", "Avenue": "Ave.", "Road": "Rd.", "Boulevard": "Blvd.", "Saint": "St.",
    "Lane": "Ln.", "Court": "Ct.", "Place": "Pl.", "Drive": "Dr.", "North": "N.",
}
MESSINESS = ("abbreviation", "accents", "typo", "punctuation", "case", "whitespace")  # the order they are applied in


def _strip_accents(text: str) -> str:
    return "".join(c for c in unicodedata.normalize("NFKD", text) if not unicodedata.combining(c))


def _messy_variant(text: str, kind: str, rng: np.random.Generator) -> str:
    """`text` changed in one way of `kind` (one of MESSINESS)."""
    if kind == "case":
        return [str.lower, str.upper, str.swapcase][rng.integers(3)](text)
    if kind == "whitespace":
        choice = rng.integers(3)
        if choice == 0:
            return " " + text + "  "
        if choice == 1:
            return text.replace(" ", "  ", 1)
        return text + " " * int(rng.integers(1, 4))
    if kind == "punctuation":
        choice = rng.integers(3)
        if choice == 0:
            return text.replace(" ", "-")
        if choice == 1:
            return text + [".", ",", ";"][rng.integers(3)]
        return text.replace(" ", ", ", 1)
    if kind == "abbreviation":
        words = text.split(" ")
        spots = [i for i, w in enumerate(words) if w.strip(".,;") in _ABBREVIATIONS]
        if not spots:
            return text
        i = spots[rng.integers(len(spots))]
        short = _ABBREVIATIONS[words[i].strip(".,;")]
        words[i] = short if rng.random() < 0.6 else short.rstrip(".")
        return " ".join(words)
    if kind == "accents":
        return _strip_accents(text)
    letters = [i for i, c in enumerate(text) if c.isalpha()]  # a typo: swap, drop, double or replace a letter
    i = letters[rng.integers(len(letters))]
    choice = rng.integers(4)
    if choice == 0 and i + 1 < len(text) and text[i + 1].isalpha():
        return text[:i] + text[i + 1] + text[i] + text[i + 2:]
    if choice == 1:
        return text[:i] + text[i + 1:]
    if choice == 2:
        return text[:i] + text[i] + text[i:]
    return text[:i] + "qwertyuiopasdfghjklzxcvbnm"[rng.integers(26)] + text[i + 1:]


@dataclass
class MessyTable:
    """A tabular toy with a messy string column; plain numpy arrays and Python strings, not tensors.

    numeric: (N, 3) float32 features, standard normal.
    raw: the category column as a user would receive it: the clean name, or a
        messy variant of it (`messiness[i]` lists the changes made to row i,
        empty for clean rows).
    clean: the ground-truth clean category of each row, one of `categories`.
    target: (N,) float32, `effect[clean] + numeric @ weights + noise`, with
        `noise` standard normal times `noise_std`: the least error possible is
        an RMSE of `noise_std`.
    train, valid, test: row indices of a 60/20/20 split.
    """

    numeric: np.ndarray
    raw: list[str]
    clean: list[str]
    target: np.ndarray
    categories: tuple[str, ...]
    effect: dict[str, float]
    weights: np.ndarray
    noise_std: float
    messiness: list[tuple[str, ...]]
    train: np.ndarray
    valid: np.ndarray
    test: np.ndarray


def messy_categories(n: int = 2000, messy: float = 0.4, noise_std: float = 0.3, seed: int = 0) -> MessyTable:
    """A regression table whose string category is written in many messy ways.

    Eight street-like categories, with Zipf-like frequencies; a fraction
    `messy` of rows get one or two changes (case, whitespace, punctuation, an
    abbreviation like "St." for "Street", stripped accents, a typo). The target
    depends on the clean category (effects -2..2) and the three numerics.

    Known answers (least squares fitted on train, RMSE on valid, defaults):
    one-hot clean categories plus numerics, about 0.30 (= `noise_std`); one-hot
    of the raw strings plus numerics, about 0.63 (variants unseen in training
    lose their category); numerics alone, about 1.3; the training mean, about
    1.7. A categorical encoder that cleans the strings should come close to the
    first.
    """
    int_at_least("n", n, 10)
    number("messy", messy, 0.0, 1.0)
    number("noise_std", noise_std, 0.0, 100.0)
    rng = np.random.default_rng(seed)
    k = len(CATEGORIES)
    frequency = 1.0 / np.arange(1, k + 1) ** 0.7
    codes = rng.choice(k, size=n, p=frequency / frequency.sum())
    clean = [CATEGORIES[c] for c in codes]
    raw, messiness = [], []
    for name, is_messy in zip(clean, rng.random(n) < messy):
        text, changes = name, []
        while is_messy and text == name:  # a messy row always differs from its clean name
            picked = set(rng.choice(len(MESSINESS), size=int(rng.integers(1, 3)), replace=False).tolist())
            text, changes = name, []
            for kind in (MESSINESS[i] for i in sorted(picked)):  # in MESSINESS order, so each change applies
                changed = _messy_variant(text, kind, rng)
                if changed != text:
                    text = changed
                    changes.append(kind)
        raw.append(text)
        messiness.append(tuple(changes))
    effect = dict(zip(CATEGORIES, np.linspace(-2.0, 2.0, k)[rng.permutation(k)].tolist()))
    weights = np.array([1.0, -0.5, 0.25])
    numeric = rng.standard_normal((n, 3)).astype(np.float32)
    target = np.array([effect[c] for c in clean]) + numeric @ weights + noise_std * rng.standard_normal(n)
    order = rng.permutation(n)
    n_train, n_valid = int(n * _SPLIT[0]), int(n * _SPLIT[1])
    return MessyTable(numeric, raw, clean, target.astype(np.float32), CATEGORIES, effect, weights, noise_std,
                      messiness, order[:n_train], order[n_train:n_train + n_valid], order[n_train + n_valid:])
