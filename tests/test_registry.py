"""The method registry: typed options (one default, a Hydra schema that refuses a wrong type, value
or key naming it; variants inherit), the resolved options of a row, and import isolation (a method
that fails to import is reported by name while the others register and run)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException

import methods
from harness.groups import CONF_DIR, rewrite_unknown_choices
from harness.problem import problem_from_cfg
from methods.common.config import InvalidConfig, ModelConfig, Problem, Workload
from methods.ring import RingOptions
from methods.usp import UspOptions

REPO = Path(__file__).resolve().parent.parent
TINY = ModelConfig("tiny", hidden=64, heads=8, kv_heads=8, head_dim=8, ffn_hidden=128)


def composed(*overrides: str):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("config", overrides=list(overrides)).method


def test_options_are_typed_with_their_default_once():
    p = Problem("ring", TINY, Workload(seq_len=64), 4, "float64", {})
    assert p.options == RingOptions() and p.options.layout == "zigzag" and p.options.zero3 is False
    assert Problem(
        "ring",
        TINY,
        Workload(seq_len=64),
        4,
        "float64",
        {k: v for k, v in composed("method=ring_zero3").items() if k != "name"},
    ).options == RingOptions(zero3=True)  # ring_zero3.yaml inherits ring.yaml, only zero3 changed
    with pytest.raises(
        InvalidConfig, match=r"unknown option\(s\) method.bogus: method 'ring' accepts layout, zero3"
    ):
        Problem("ring", TINY, Workload(seq_len=64), 4, "float64", {"bogus": 1})
    with pytest.raises(InvalidConfig, match="method.layout='diagonal' is not one of basic, zigzag, stripe"):
        Problem("ring", TINY, Workload(seq_len=64), 4, "float64", {"layout": "diagonal"})


@pytest.mark.parametrize(
    "override,key",
    [
        ("method.zero3=maybe", "method.zero3"),
        ("method.layout=diagonal", "method.layout"),
        ("method.bogus=1", "method.bogus"),
    ],
)
def test_the_schema_refuses_at_composition_naming_the_key(override, key):
    with pytest.raises(ConfigCompositionException) as e:
        composed("method=ring", override)
    assert key in str(e.value) + str(e.value.__cause__)


@pytest.mark.parametrize(
    "argv,words",
    [
        (["method=ring", "method.zero3=maybe"], "method.zero3='maybe': Value 'maybe' is not a valid bool"),
        (
            ["method=usp", "method.layout=diagonal"],
            "method.layout='diagonal': Invalid value 'diagonal', expected one of",
        ),
        (["method=ulysses", "method.bogus=1"], "unknown option(s) method.bogus; method 'ulysses' accepts"),
    ],
)
def test_a_single_run_with_a_refused_option_is_an_invalid_problem_naming_it(argv, words):
    overrides = rewrite_unknown_choices(argv)  # what harness.run does before Hydra composes
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=[*overrides, "world_size=2"])
    with pytest.raises(InvalidConfig) as e:
        problem_from_cfg(cfg)
    assert str(e.value).startswith(words), e.value


def test_resolved_options_fill_what_is_left_unset():
    p = Problem("usp", TINY, Workload(seq_len=64), 8, "float64", {"layout": "stripe"})
    assert p.options == UspOptions(layout="stripe")  # degrees unset, as given
    assert methods.resolve_options(p) == {
        "zero3": False,
        "ulysses_degree": 2,
        "ring_degree": 4,
        "placement": "ulysses_inner",
        "layout": "stripe",
    }
    assert methods.resolve_options(Problem("tp_sp", TINY, Workload(seq_len=64), 2, "float64")) == {}


BROKEN_LASP2 = """
import json, sys
sys.modules["methods.lasp2"] = None  # importing it now raises ImportError, as a broken package would
import methods
from methods.common.config import InvalidConfig, ModelConfig, Problem, Workload
model = ModelConfig("tiny", hidden=64, heads=8, kv_heads=8, head_dim=8, ffn_hidden=128)
p = Problem("ring", model, Workload(seq_len=64), 4, "float64")
methods.for_problem(p).validate(p)
try:
    methods.for_problem(Problem("lasp2", model, Workload(seq_len=64), 4, "float64"))
except InvalidConfig as e:
    refused = str(e)
from hydra import compose, initialize_config_dir
from harness.groups import CONF_DIR, rewrite_unknown_choices
from harness.problem import problem_from_cfg
overrides = rewrite_unknown_choices(["method=lasp2", "model=tiny_linear"])  # a single run of it
with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
    cfg = compose("config", overrides=overrides)
try:
    problem_from_cfg(cfg)
except InvalidConfig as e:
    row_error = str(e)
print(json.dumps({"broken": methods.BROKEN, "names": methods.names(), "refused": refused,
                  "row_error": row_error,

                  "ring_fwd": methods.for_problem(p).comm_cost(p).as_dict()["fwd"]}))
"""


def test_a_method_that_fails_to_import_is_reported_while_the_others_run():
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    res = subprocess.run(
        [sys.executable, "-c", BROKEN_LASP2],
        check=False,
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    out = json.loads(res.stdout.splitlines()[-1])
    assert set(out["broken"]) == {"lasp1", "lasp2"}  # lasp1 builds on lasp2
    assert "method package 'lasp2' failed to import" in res.stderr  # the logged warning
    assert {"ring", "ulysses", "usp", "dsp", "tp_sp"} <= set(out["names"]) and "lasp2" not in out["names"]
    assert out["refused"].startswith("method 'lasp2' failed to import: ") and "halted" in out["refused"]
    assert out["row_error"] == out["refused"]  # the single run's invalid row says why
    assert out["ring_fwd"]["send"] > 0
    alone = subprocess.run(
        [sys.executable, "-c", "import methods.ring"],
        check=False,
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert alone.returncode == 0, alone.stderr[-3000:]


def test_a_method_glob_in_a_sweep_picks_method_files_only(tmp_path):
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "harness.run",
            "-m",
            "method=glob(ulysses*)",
            "mode=dryrun",
            "workload.seq_len=64",
            "world_size=2",
            f"hydra.sweep.dir={tmp_path}",
            "hydra/job_logging=none",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert re.search(r"^sweep: 2 ok -> ", out.stdout, re.M), out.stdout  # no third point, no failure
