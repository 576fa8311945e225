"""Short, stable hashes of configurations: a job's identity for resuming (`config_hash`), and the tag
that keeps an experiment's output directory apart from the same experiment run with other overrides."""

from __future__ import annotations

import hashlib
import json

from omegaconf import DictConfig, OmegaConf

# overrides an experiment's directory already names (results/experiments/<name>/<mode>)
NAMED_IN_EXPERIMENT_DIR = ("sweep", "mode")


def _digest(value: object, length: int) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:length]


def config_hash(cfg: DictConfig) -> str:
    """Identity of a job's configuration for resuming: everything but `resume` and Hydra's own keys."""
    plain = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(plain, dict)
    plain.pop("resume", None)
    return _digest(plain, 16)


def overrides_tag(task_overrides: list[str]) -> str:
    """`-<8 hex digits>` naming the command line's overrides other than the experiment and the mode
    (in any order), or "" when there are none: `+sweep=usp_table4 mode=dryrun model.layers=1` and
    `+sweep=usp_table4 mode=dryrun` then write to different directories."""
    others = sorted(
        o for o in task_overrides if o.partition("=")[0].lstrip("+~") not in NAMED_IN_EXPERIMENT_DIR
    )
    return f"-{_digest(others, 8)}" if others else ""


# `${spbench_overrides_tag:${hydra:overrides.task}}` in conf/sweep/*.yaml's `hydra.sweep.dir`. Cached:
# the sweep directory resolves once, in the multirun's parent, and Hydra copies that cache into every
# job's config, so each job (whose own overrides differ) sees the parent's directory.
if not OmegaConf.has_resolver("spbench_overrides_tag"):
    OmegaConf.register_new_resolver("spbench_overrides_tag", overrides_tag, use_cache=True)
