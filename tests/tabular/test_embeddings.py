import numpy as np
import pytest

from dltips.tabular.embeddings import emb_size, emb_sizes

# fastai's emb_sz_rule, min(600, round(1.6 * n**0.56)), worked out by hand:
# 1.6 * 10**0.56 = 5.809, 1.6 * 100**0.56 = 21.09, 1.6 * 1000**0.56 = 76.58, 1.6 * 2**0.56 = 2.359
RULE_BY_HAND = {1: 2, 2: 2, 3: 3, 10: 6, 100: 21, 1000: 77, 10**6: 600}


@pytest.mark.parametrize("n, expected", sorted(RULE_BY_HAND.items()))
def test_emb_size_matches_the_rule_worked_by_hand(n, expected):
    assert emb_size(n) == expected


def test_emb_size_cap_starts_where_the_rule_reaches_600():
    # 1.6 * n**0.56 = 599.5 at n = (599.5 / 1.6) ** (1 / 0.56); round() reaches 600 just above it
    first = int(np.ceil((599.5 / 1.6) ** (1 / 0.56)))
    assert emb_size(first - 1) == 599
    assert emb_size(first) == 600
    assert emb_size(10 * first) == 600


@pytest.mark.parametrize("bad", [0, -3, 2.0, True, "7", None])
def test_emb_size_rejects_non_positive_ints(bad):
    with pytest.raises(ValueError, match="n_categories must be an int >= 1"):
        emb_size(bad)


def test_emb_size_accepts_numpy_ints():
    assert emb_size(np.int64(100)) == 21


def test_emb_sizes_from_a_dict_keeps_order_and_applies_overrides():
    sizes = emb_sizes({"zip": 1000, "city": 10, "flag": 2}, overrides={"city": 4})
    assert list(sizes) == ["zip", "city", "flag"]
    assert sizes == {"zip": (1000, 77), "city": (10, 4), "flag": (2, 2)}


def test_emb_sizes_from_a_list_returns_pairs_and_takes_index_overrides():
    assert emb_sizes([100, 3]) == [(100, 21), (3, 3)]
    assert emb_sizes((100, 3), overrides={1: 8}) == [(100, 21), (3, 8)]


class FittedEncoder:
    """Stands for a fitted CategoryEncoder: all emb_sizes reads is `n_categories_`."""

    n_categories_ = {"street": 12, "city": 100}


class UnfittedEncoder:
    """Like CategoryEncoder before fit: `n_categories_` raises, fit and transform exist."""

    @property
    def n_categories_(self):
        raise RuntimeError("not fitted")

    def fit(self, X):
        return self

    def transform(self, X):
        return X


def test_emb_sizes_reads_a_fitted_encoder():
    assert emb_sizes(FittedEncoder()) == {"street": (12, 6), "city": (100, 21)}


def test_emb_sizes_with_the_real_encoder():
    from dltips.tabular.encoder import CategoryEncoder

    encoder = CategoryEncoder().fit({"colour": ["red", "blue", "red", "green"]})
    n = encoder.n_categories_["colour"]
    assert emb_sizes(encoder) == {"colour": (n, round(1.6 * n**0.56))}


def test_emb_sizes_errors():
    with pytest.raises(ValueError, match=r"not a key of the source; known keys: \['zip', 'city'\]"):
        emb_sizes({"zip": 5, "city": 3}, overrides={"town": 2})
    with pytest.raises(ValueError, match=r"known keys: \[0, 1\]"):
        emb_sizes([5, 3], overrides={2: 4})
    with pytest.raises(ValueError, match=r"overrides\['zip'\] must be an int >= 1, got 0"):
        emb_sizes({"zip": 5}, overrides={"zip": 0})
    with pytest.raises(ValueError, match="n_categories of column 'zip' must be an int >= 1, got 0"):
        emb_sizes({"zip": 0})
    with pytest.raises(ValueError, match="n_categories at index 1 must be an int >= 1"):
        emb_sizes([4, 2.5])
    with pytest.raises(ValueError, match="fit it before"):
        emb_sizes(UnfittedEncoder())
    with pytest.raises(TypeError, match="fitted CategoryEncoder, a dict"):
        emb_sizes("street")
    with pytest.raises(TypeError, match="overrides must be a dict"):
        emb_sizes([4], overrides=[(0, 2)])
