"""harness.labels (configuration columns, the human label) and harness.units (one unit per value set)."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from harness.labels import CONFIG_COLUMNS, label, with_labels
from harness.units import fmt, fmt_tokens, unit_for


@pytest.mark.parametrize(
    "row, expected",
    [
        (
            {
                "method": "usp",
                "ulysses_degree": 2,
                "ring_degree": 4,
                "layout": "zigzag",
                "placement": "ulysses_inner",
                "zero3": False,
            },
            "usp u2xr4 zigzag ulysses_inner",
        ),
        ({"method": "ring", "layout": "zigzag", "zero3": True, "ulysses_degree": None}, "ring zigzag zero3"),
        ({"method": "ulysses", "zero3": False, "layout": float("nan"), "video_attention": None}, "ulysses"),
        ({"method": "ulysses", "video_attention": "all"}, "ulysses all"),
        ({"method": "lasp2", "decay": "retnet"}, "lasp2 retnet"),
        ({"method": "dsp", "adaln": True, "qk_norm": True}, "dsp adaln qk_norm"),
        ({"method": "dsp", "adaln": False, "qk_norm": None}, "dsp"),
    ],
)
def test_label_names_what_is_set(row, expected):
    assert label(row) == expected


def test_config_columns_hold_every_option():
    assert {
        "method",
        "world_size",
        "seq_len",
        "layers",
        "mode",
        "ulysses_degree",
        "ring_degree",
        "layout",
        "placement",
        "zero3",
        "video_attention",
        "decay",
    } <= set(CONFIG_COLUMNS)


def test_with_labels_counts_video_tokens():
    df = pd.DataFrame(
        [
            {"method": "dsp", "seq_len": 0, "frames": 4, "spatial": 16, "batch_size": 2},
            {"method": "ring", "seq_len": 1024, "frames": None, "spatial": None, "batch_size": 1},
        ]
    )
    out = with_labels(df)
    assert out.tokens.tolist() == [128.0, 1024.0] and out.label.tolist() == ["dsp", "ring"]


@pytest.mark.parametrize(
    "values, kind, unit",
    [
        ([0.001 * 2**30], "bytes", "MiB"),
        ([512, 2.5 * 2**40], "bytes", "TiB"),
        ([3.0], "bytes", "B"),
        ([0.0004, 0.002], "seconds", "ms"),
        ([5e-6], "seconds", "us"),
        ([90.0], "seconds", "s"),
        ([12_345.0, math.nan], "count", "K"),
        ([], "count", ""),
    ],
)
def test_unit_fits_the_largest_value(values, kind, unit):
    divisor, name = unit_for(values, kind)
    assert name == unit
    biggest = max((abs(v) for v in values if not math.isnan(v)), default=0)
    assert biggest == 0 or 1 <= biggest / divisor < 1024


def test_fmt():
    assert fmt(1.5 * 2**30, "bytes") == "1.5 GiB"
    assert fmt(0.23, "seconds") == "230 ms"
    assert fmt(None, "count") == "-"


def test_fmt_tokens():
    assert [fmt_tokens(n) for n in (32768, 131072, 2**20, 3072, 1000, 300)] == [
        "32K",
        "128K",
        "1M",
        "3K",
        "1K",
        "300",
    ]
