"""The `tabular` demo: a regression table whose street names are typed in many messy ways.

The data is `dltips.data.toys.messy_categories` (2,000 generated rows, no
download): eight street-like categories, 40 % of rows written with changed
case, whitespace, punctuation, abbreviations, stripped accents or a typo; the
target depends on the clean street and three numeric columns, plus noise of
standard deviation 0.3 (the least RMSE possible). Its fixed 60/20/20 split
comes with the toy. A `CategoryEncoder` fitted on the training rows merges
the spellings (the doctor's `encode-categoricals` finding shows its merge
table), and a `TabularModel` sized by `emb_sizes` learns from the result.
"""

from __future__ import annotations

from typing import Any

import torch

from dltips.data.toys import messy_categories
from dltips.tabular.model import TabularData
from dltips.task import Task

NUMERIC = ("x1", "x2", "x3")


def tabular_data(n: int = 2000, messy: float = 0.4, seed: int = 0, encoder: Any = None) -> TabularData:
    """The demo's table as `TabularData` (columns "street", x1..x3, target "y"), split as the toy says.

    `encoder` replaces the default `CategoryEncoder` (fitted on the training rows unless already fitted).
    """
    toy = messy_categories(n, messy=messy, seed=seed)
    table = {"street": toy.raw, **{name: toy.numeric[:, j] for j, name in enumerate(NUMERIC)}, "y": toy.target}
    return TabularData(table, categorical=["street"], continuous=list(NUMERIC), target="y",
                       split=(toy.train, toy.valid, toy.test), encoder=encoder, kind="regression")


def tabular_task(seed: int = 0, batch_size: int = 64) -> Task:
    """The healthy demo Task: a TabularModel (embeddings by the size rule, 200-100 MLP), AdamW at the default LR."""
    data = tabular_data()
    torch.manual_seed(seed)
    return data.task(batch_size=batch_size, name="tabular")
