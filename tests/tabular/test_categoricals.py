import json
import math
import pickle

import numpy as np
import pytest

from dltips.data.toys import messy_categories
from dltips.tabular.categoricals import check_categoricals
from dltips.tabular.encoder import MISSING, RARE, RESERVED, UNKNOWN, CategoryEncoder
from dltips.tabular.similarity import edit_distance, normalize, similarity

# A hand-made column: each spelling's group was decided by reading it.
COLUMN = (["Main Street"] * 6 + ["main street "] * 2 + ["Main St."] * 2 + ["Mian Street"]
          + ["Mill Street"] * 4 + ["Route 1"] * 3 + ["Route 2"] * 3 + ["New York"] * 2 + ["NYC"]
          + ["Café Royal"] * 2 + ["CAFE ROYAL"] + [None, float("nan"), "", "   "])
GROUPS = [{"Main Street", "main street ", "Main St.", "Mian Street"}, {"Mill Street"}, {"Route 1"}, {"Route 2"},
          {"New York", "NYC"}, {"Café Royal", "CAFE ROYAL"}]


def test_normalize_hand_checked():
    assert normalize("  Café  Royal-Court. ") == "cafe royal court"
    assert normalize("N.Y.") == normalize("NY") == "ny"
    assert normalize("ＡＢＣ") == "abc"  # full-width letters (NFKC)
    assert normalize("O'Brien") == normalize("O’Brien") == "obrien"
    assert normalize("a\tb\nc") == "a b c"
    assert normalize("Zürich") == "zurich"


def _osa_reference(a: str, b: str) -> int:
    """Optimal string alignment distance by full table (independent of the rolling-row version)."""
    d = [[0] * (len(b) + 1) for _ in range(len(a) + 1)]
    for i in range(len(a) + 1):
        d[i][0] = i
    for j in range(len(b) + 1):
        d[0][j] = j
    for i in range(1, len(a) + 1):
        for j in range(1, len(b) + 1):
            d[i][j] = min(d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + (a[i - 1] != b[j - 1]))
            if i > 1 and j > 1 and a[i - 1] == b[j - 2] and a[i - 2] == b[j - 1]:
                d[i][j] = min(d[i][j], d[i - 2][j - 2] + 1)
    return d[-1][-1]


def test_edit_distance_matches_reference_and_known_values():
    assert edit_distance("kitten", "sitting") == 3
    assert edit_distance("abcd", "acbd") == 1  # one swap
    assert edit_distance("ca", "abc") == 3  # OSA, not unrestricted Damerau (2)
    rng = np.random.default_rng(0)
    for _ in range(200):
        a = "".join(rng.choice(list("abc"), size=rng.integers(0, 7)))
        b = "".join(rng.choice(list("abc"), size=rng.integers(0, 7)))
        assert edit_distance(a, b) == _osa_reference(a, b), (a, b)
        for limit in (0, 1, 2):  # the early exit says "more than limit" exactly when it is
            assert edit_distance(a, b, limit) == min(_osa_reference(a, b), limit + 1), (a, b, limit)


def test_similarity_rules():
    assert similarity("main street", "main street") == 1.0
    assert similarity("mainstreet", "main street") == 1.0  # spaces only
    assert similarity("main st", "main street") == pytest.approx(0.9)  # (1 + 0.8) / 2
    assert similarity("mian street", "main street") == pytest.approx((0.75 + 1) / 2)  # one swap in a 4-letter word
    assert similarity("route 1", "route 2") == 0.0  # numbers differ
    assert similarity("south park drive", "north park drive") == 0.0  # two edits in a 5-letter word: another word
    assert similarity("main street", "north main street") == 0.0  # an extra word
    assert similarity("washington", "wxshxngtxn") == 0.0  # 3 edits in 10 letters: more than 1 + 10 // 8
    assert similarity("washington", "wahsingtno") == pytest.approx(0.8)  # 2 edits allowed at 8+ letters
    assert similarity("main street", "mill street") < 0.8
    assert similarity("north park drive", "north hill road") < 0.8


def test_hand_made_column_merges_as_expected():
    encoder = CategoryEncoder(synonyms={"NYC": "New York"})
    codes = encoder.fit_transform(COLUMN)
    assert codes.shape == (len(COLUMN),) and codes.dtype == np.int64
    code_of = {value: code for value, code in zip(COLUMN, codes.tolist()) if isinstance(value, str) and value.strip()}
    for group in GROUPS:
        assert len({code_of[v] for v in group}) == 1, group
    assert len({code_of[next(iter(g))] for g in GROUPS}) == len(GROUPS)
    assert codes[-4:].tolist() == [MISSING] * 4
    names = encoder.categories_[0]
    assert names[:3] == list(RESERVED)
    assert names[3] == "Main Street"  # the largest group first, named by its most frequent spelling
    assert encoder.n_categories_ == {0: 3 + len(GROUPS)}
    reasons = {r["raw"]: r["reason"] for r in encoder.merge_records()}
    assert reasons == {"main street ": "normalized", "Main St.": "similar", "Mian Street": "similar",
                       "NYC": "synonym", "CAFE ROYAL": "normalized"}


def test_unknown_missing_and_rare_are_kept_apart():
    train = ["red"] * 5 + ["green"] * 5 + ["blue"] + [None]
    encoder = CategoryEncoder(min_count=2).fit(train)
    codes = encoder.transform(["red", None, float("nan"), "", "purple", "blue", "Green ", "gren"])
    red, green = encoder.categories_[0].index("red"), encoder.categories_[0].index("green")
    assert codes.tolist() == [red, MISSING, MISSING, MISSING, UNKNOWN, RARE, green, green]
    assert encoder.last_counts_[0] == {"rows": 8, "missing": 3, "unknown": 1, "rare": 1, "matched": 1}
    assert encoder.inverse_transform(codes)[:6] == ["red", None, None, None, "#unknown", "#rare"]


def test_transform_never_raises_on_new_values():
    encoder = CategoryEncoder().fit(["a", "b", "c"])
    odd = ["", "z" * 500, "ÅÉÎ", "12345", "!!!", 3, 4.5, True, None, "\x00", "a b c d e f g"]
    codes = encoder.transform(odd)
    assert codes.shape == (len(odd),)
    assert set(codes.tolist()) <= {MISSING, UNKNOWN} | {encoder.categories_[0].index(x) for x in "abc"}


def test_round_trip_on_a_dataframe():
    pd = pytest.importorskip("pandas")
    table = messy_categories(600, seed=1)
    frame = pd.DataFrame({"street": table.raw, "parity": ["even" if i % 2 else "odd" for i in range(600)]})
    encoder = CategoryEncoder().fit(frame)
    codes = encoder.transform(frame)
    assert codes.shape == (600, 2)
    decoded = encoder.inverse_transform(codes)
    again = encoder.transform(pd.DataFrame(decoded, columns=["street", "parity"]))
    np.testing.assert_array_equal(again, codes)  # canonical names encode to their own ids
    clean_of_code = {}
    for code, clean in zip(codes[:, 0].tolist(), table.clean):  # every id holds one clean category
        assert clean_of_code.setdefault(code, clean) == clean
    assert encoder.columns_ == ["street", "parity"]


def test_input_forms_agree():
    pd = pytest.importorskip("pandas")
    values = ["x", "y", "X ", None, "y"]
    expected = CategoryEncoder().fit_transform(values)
    np.testing.assert_array_equal(CategoryEncoder().fit_transform(np.array(values, dtype=object)), expected)
    np.testing.assert_array_equal(CategoryEncoder().fit_transform(pd.Series(values, name="c")), expected)
    rows = [[v, "k"] for v in values]
    np.testing.assert_array_equal(CategoryEncoder().fit_transform(rows)[:, 0], expected)
    np.testing.assert_array_equal(CategoryEncoder().fit_transform({"c": values})[:, 0], expected)


def test_clear_errors():
    with pytest.raises(ValueError, match="threshold"):
        CategoryEncoder(threshold=0)
    with pytest.raises(ValueError, match="min_count"):
        CategoryEncoder(min_count=0)
    with pytest.raises(RuntimeError, match="not fitted"):
        CategoryEncoder().transform(["a"])
    with pytest.raises(TypeError, match="one string"):
        CategoryEncoder().fit("abc")
    encoder = CategoryEncoder().fit({"a": ["x"], "b": ["y"]})
    with pytest.raises(ValueError, match=r"fitted on \['a', 'b'\]"):
        encoder.transform({"a": ["x"], "c": ["y"]})
    with pytest.raises(ValueError, match="same length"):
        CategoryEncoder().fit({"a": ["x", "y"], "b": ["y"]})


def test_pickle_and_save_load_keep_everything(tmp_path):
    encoder = CategoryEncoder(synonyms={"NYC": "New York"}, min_count=2).fit(COLUMN)
    probe = COLUMN + ["Mian Stret", "Zebra", "nyc", "Route 3"]
    expected = encoder.transform(probe)
    restored = pickle.loads(pickle.dumps(encoder))
    np.testing.assert_array_equal(restored.transform(probe), expected)
    path = tmp_path / "encoder.json"
    encoder.save(path)
    assert json.loads(path.read_text())["format"] == "dltips.CategoryEncoder"
    loaded = CategoryEncoder.load(path)
    np.testing.assert_array_equal(loaded.transform(probe), expected)
    assert loaded.merge_records() == encoder.merge_records()
    assert loaded.categories_ == encoder.categories_
    assert [p.name for p in tmp_path.iterdir()] == ["encoder.json"]  # no temporary file left behind
    (tmp_path / "other.json").write_text('{"format": "something else"}')
    with pytest.raises(ValueError, match="not a saved CategoryEncoder"):
        CategoryEncoder.load(tmp_path / "other.json")


def test_apply_merges_undoes_and_adds():
    pd = pytest.importorskip("pandas")
    encoder = CategoryEncoder().fit(COLUMN)
    table = encoder.merges
    assert list(table.columns) == ["column", "raw", "canonical", "similarity", "rows", "canonical_rows", "reason"]
    table.loc[table["raw"] == "Mian Street", "canonical"] = "Mian Street"  # undo a merge
    edited = pd.concat([table, pd.DataFrame([{"column": 0, "raw": "Mill Street", "canonical": "Main Street"}])])
    encoder.apply_merges(edited)
    codes = dict(zip(COLUMN, encoder.transform(COLUMN).tolist()))
    assert codes["Mian Street"] != codes["Main Street"]
    assert codes["Mill Street"] == codes["Main Street"] == codes["Main St."]
    with pytest.raises(ValueError, match="not a training spelling"):
        encoder.apply_merges([{"column": 0, "raw": "Main St.", "canonical": "Elm Street"}])


def test_merging_off_keeps_normalisation_only():
    codes = CategoryEncoder(threshold=1.0).fit_transform(["Main Street", "main street", "Main St.", "Mian Street"])
    assert codes[0] == codes[1] and len(set(codes.tolist())) == 3


def test_check_warns_on_raw_messy_columns_and_passes_clean_ones():
    messy = messy_categories(2000, messy=0.4)
    train, valid = [messy.raw[i] for i in messy.train], [messy.raw[i] for i in messy.valid]
    findings = check_categoricals(train, valid)
    assert [f.status for f in findings] == ["warn"] and "inflate" in findings[0].message
    column = findings[0].evidence["columns"]["0"]
    assert column["raw"] > 100 and column["merged"] <= 10
    encoder = CategoryEncoder().fit(train)
    assert check_categoricals(train, valid, encoder=encoder)[0].status == "pass"
    clean = messy_categories(2000, messy=0.0)
    findings = check_categoricals([clean.raw[i] for i in clean.train], [clean.raw[i] for i in clean.valid])
    assert findings[0].status == "pass"
    assert findings[0].evidence["columns"]["0"]["raw"] == 8


def test_check_warns_about_unknown_values_in_valid():
    encoder = CategoryEncoder().fit(["alpha", "beta", "gamma"] * 20)
    valid = ["alpha"] * 90 + ["omega", "zeta", "kappa", "sigma", "delta", "theta", "iota", "lambda", "rho", "tau"]
    finding = check_categoricals(["alpha", "beta", "gamma"] * 20, valid, encoder=encoder)[0]
    assert finding.status == "warn"
    assert math.isclose(finding.evidence["columns"]["0"]["valid_unknown"], 0.10)


def test_check_warns_when_the_given_encoder_keeps_variants_apart():
    messy = messy_categories(2000, messy=0.4)
    train = [messy.raw[i] for i in messy.train]
    plain = CategoryEncoder(threshold=1.0, normalize_text=False).fit(train)  # ordinal encoding of raw strings
    finding = check_categoricals(train, encoder=plain)[0]
    assert finding.status == "warn" and "inflate" in finding.message
    column = finding.evidence["columns"]["0"]
    assert column["kept"] == column["raw"] > 100 and column["merged"] <= 10


def test_close_but_distinct_categories_are_listed_for_review_without_a_warning():
    train = ["North Park Drive"] * 10 + ["North Park Road"] * 8 + ["Elm Court"] * 6
    encoder = CategoryEncoder().fit(train)
    assert encoder.n_categories_[0] == 3 + 3  # nothing merged
    pairs = encoder.near_duplicates()
    assert [(p["a"], p["b"]) for p in pairs] == [("North Park Drive", "North Park Road")]
    assert similarity("north park drive", "north park road") == 0.0  # one word differs: never merged
    relaxed = (1 + 1 + 1 - edit_distance("drive", "road") / 5) / 3
    assert pairs[0]["similarity"] == pytest.approx(relaxed, abs=1e-4)
    finding = check_categoricals(train, train, encoder=encoder)[0]
    assert finding.status == "pass" and "North Park Road" in finding.message


def test_a_spelling_is_compared_with_the_frequent_spellings_even_among_many_rare_variants():
    # "N Washington Place" has dozens of rarer typo variants, which are its nearest n-gram neighbours;
    # it must still be compared with (and join) the more frequent "North Washington Place".
    rng = np.random.default_rng(0)
    variants = set()
    while len(variants) < 30:
        text = list("N Washington Place")
        i = int(rng.integers(2, len(text)))
        text[i] = "xyzq"[rng.integers(4)]
        variants.add("".join(text))
    column = ["North Washington Place"] * 50 + ["N Washington Place"] * 20 + sorted(variants)
    codes = dict(zip(column, CategoryEncoder().fit_transform(column).tolist()))
    assert codes["N Washington Place"] == codes["North Washington Place"]


def test_spellings_equal_but_for_spaces_merge():
    codes = CategoryEncoder().fit_transform(["Route 1"] * 5 + ["Rout e1", "Route1", "R oute 1"])
    assert len(set(codes.tolist())) == 1


@pytest.mark.parametrize("frequent", ["kingsbridg", "kingsbrige"])
def test_a_new_value_equally_close_to_two_spellings_goes_to_the_more_frequent_as_in_fit(frequent):
    rare = "kingsbrige" if frequent == "kingsbridg" else "kingsbridg"
    train = [frequent] * 5 + [rare]  # 0.80 similar to each other: two categories at threshold 0.85
    encoder = CategoryEncoder(threshold=0.85).fit(train)
    assert similarity("kingsbridge", "kingsbridg") == similarity("kingsbridge", "kingsbrige") > 0.85
    codes = encoder.transform(["kingsbridge", frequent, rare])
    assert codes[0] == codes[1] != codes[2]
    # fit breaks the same tie the same way
    refit = CategoryEncoder(threshold=0.85).fit(train + ["kingsbridge"])
    assert refit.transform(["kingsbridge"])[0] == refit.transform([frequent])[0]
