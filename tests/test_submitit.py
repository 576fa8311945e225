"""Sweeps through hydra-submitit-launcher, and the node plan a multi-node SLURM job uses: the SLURM
path itself needs a cluster, so the same launcher runs locally (`submitit_local`), the node plan is
read from fake SLURM environments, and two "nodes" on this machine meet at one static rendezvous."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from harness.cluster import ClusterError, expand_nodelist, node_plan, primary_node
from harness.groups import CONF_DIR
from harness.results import load

REPO = Path(__file__).resolve().parent.parent


def _no_slurm_env() -> dict[str, str]:
    """This environment without SLURM's variables: a test run inside a SLURM job stays single-node."""
    return {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}


def _step_env(
    node: int, nodes: int = 2, nodelist: str = "gpu[01-02]", tasks: int | None = None, job: str = "4242"
) -> dict[str, str]:
    """What `srun` puts in a step task's environment (the variables node_plan reads)."""
    return {
        "SLURM_JOB_ID": job,
        "SLURM_STEP_ID": "0",
        "SLURM_NNODES": str(nodes),
        "SLURM_STEP_NUM_NODES": str(nodes),
        "SLURM_STEP_NUM_TASKS": str(tasks or nodes),
        "SLURM_STEP_NODELIST": nodelist,
        "SLURM_JOB_NODELIST": nodelist,
        "SLURM_NODEID": str(node),
    }


@pytest.mark.parametrize(
    "nodelist,hosts",
    [
        ("gpu01", ["gpu01"]),
        ("gpu[01-02]", ["gpu01", "gpu02"]),
        ("gpu[08-11]", ["gpu08", "gpu09", "gpu10", "gpu11"]),  # padding kept across a carry
        ("n[9-11]", ["n9", "n10", "n11"]),  # no padding
        ("gpu[01-02,07],login3", ["gpu01", "gpu02", "gpu07", "login3"]),
        ("a[1-2]-ib[0-1]", ["a1-ib0", "a1-ib1", "a2-ib0", "a2-ib1"]),
        ("node-[001-002],gpu[3]", ["node-001", "node-002", "gpu3"]),
    ],
)
def test_expand_nodelist(nodelist, hosts):
    assert expand_nodelist(nodelist) == hosts


@pytest.mark.parametrize("bad", ["gpu[01-02", "gpu01-02]", "gpu[a-b]", "gpu[05-02]", "gpu[[1]]"])
def test_expand_nodelist_rejects_malformed(bad):
    with pytest.raises(ValueError):
        expand_nodelist(bad)


def test_node_plan_local_without_a_multinode_step():
    for env in (
        {},
        {"SLURM_JOB_ID": "7", "SLURM_NNODES": "2", "SLURM_JOB_NODELIST": "gpu[01-02]", "SLURM_NODEID": "0"},
    ):  # an sbatch/salloc shell: one process, no peers will come
        plan = node_plan(8, env=env)
        assert (plan.nnodes, plan.nproc_per_node, plan.node_rank, plan.rdzv_endpoint) == (
            1,
            8,
            0,
            "localhost:0",
        )
        assert plan.primary and primary_node(env)
        kw = plan.launch_kwargs()
        assert (kw["min_nodes"], kw["max_nodes"], kw["rdzv_backend"]) == (1, 1, "c10d")
    assert (
        node_plan(8, env={}).run_id != node_plan(8, env={}).run_id
    )  # concurrent local launches never share one


def test_node_plan_two_nodes_of_four_gpus():
    plans = [node_plan(8, env=_step_env(node)) for node in (0, 1)]
    for node, plan in enumerate(plans):
        assert (plan.nnodes, plan.nproc_per_node, plan.node_rank, plan.world_size) == (2, 4, node, 8)
        assert plan.hosts == ("gpu01", "gpu02")
        assert plan.rdzv_endpoint == f"gpu01:{20000 + 4242}"
        kw = plan.launch_kwargs()
        assert (kw["min_nodes"], kw["max_nodes"], kw["nproc_per_node"]) == (2, 2, 4)
        assert kw["rdzv_backend"] == "static" and kw["rdzv_configs"] == {"rank": node}
    assert plans[0].run_id == plans[1].run_id  # the nodes find each other by it
    assert plans[0].primary and not plans[1].primary
    assert primary_node(_step_env(0)) and not primary_node(_step_env(1))
    assert node_plan(8, env={**_step_env(1), "MASTER_PORT": "31000"}).rdzv_endpoint == "gpu01:31000"


def test_node_plan_one_process_plays_on_node_zero():
    zero, one = (node_plan(64, one_process=True, env=_step_env(n)) for n in (0, 1))
    assert (zero.nnodes, zero.nproc_per_node, zero.idle) == (1, 1, False)
    assert (one.nproc_per_node, one.idle, one.primary) == (0, True, False)


@pytest.mark.parametrize(
    "world_size,env,message",
    [
        (6, _step_env(0, nodes=4, nodelist="gpu[01-04]"), "does not split evenly over the step's 4 nodes"),
        (8, _step_env(0, tasks=16), "set hydra.launcher.tasks_per_node=1"),
        (8, {**_step_env(0), "SLURM_STEP_NODELIST": "", "SLURM_JOB_NODELIST": ""}, "no SLURM_STEP_NODELIST"),
        (8, _step_env(0, nodelist="gpu01"), "do not describe a 2-node step"),
    ],
)
def test_node_plan_refuses_an_allocation_it_cannot_use(world_size, env, message):
    with pytest.raises(ClusterError, match=message):
        node_plan(world_size, env=env)


def test_slurm_preset_sizes_the_job_from_the_config():
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = compose(
            "config",
            overrides=["hydra/launcher=slurm_8gpu", "world_size=16", "bench.timeout_s=1800"],
            return_hydra_config=True,
        )
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert (launcher.nodes, launcher.gpus_per_node, launcher.tasks_per_node) == (2, 8, 1)
    assert launcher.timeout_min == 30 + 10 and launcher.partition is None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# one "node": this node's plan from the fake step environment, its ranks started by the elastic
# launcher exactly as harness/launch.py builds its LaunchConfig; each rank all-reduces its rank
_NODE = textwrap.dedent("""
    import sys
    from torch.distributed.elastic.multiprocessing import DefaultLogsSpecs
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch
    from harness.cluster import node_plan
    plan = node_plan(2)
    rank = ("import os, sys, torch, torch.distributed as dist; dist.init_process_group('gloo'); "
            "t = torch.tensor([dist.get_rank()]); dist.all_reduce(t); "
            "open(os.path.join(sys.argv[1], "
            "f'rank{dist.get_rank()}of{dist.get_world_size()}_sum{int(t)}'), 'w').close(); "

            "dist.destroy_process_group()")
    config = LaunchConfig(**plan.launch_kwargs(), max_restarts=0, monitor_interval=0.1,
                          logs_specs=DefaultLogsSpecs(log_dir=sys.argv[2]))  # not a stray dir in /tmp
    elastic_launch(config, sys.executable)("-c", rank, sys.argv[1])
""")


def test_two_nodes_meet_at_one_static_rendezvous(tmp_path):
    port, out = _free_port(), tmp_path / "out"
    out.mkdir()
    nodes = [
        subprocess.Popen(
            [sys.executable, "-c", _NODE, str(out), str(tmp_path / "logs")],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={
                **_no_slurm_env(),
                **_step_env(n, nodelist="localhost,localhost"),
                "MASTER_PORT": str(port),
                "PYTHONPATH": str(REPO),
            },
        )
        for n in (0, 1)
    ]
    outputs = [node.communicate(timeout=240)[0] for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], "\n".join(o[-2000:] for o in outputs)
    assert sorted(p.name for p in out.iterdir()) == ["rank0of2_sum1", "rank1of2_sum1"]


def test_submitit_local_multirun_writes_one_row_per_point(tmp_path):
    sweep = tmp_path / "sweep"
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "harness.run",
            "-m",
            "hydra/launcher=submitit_local",
            "method=ulysses",
            "model=tiny",
            "world_size=2",
            "workload.seq_len=64,128",
            "bench.warmup=0",
            "bench.iters=1",
            f"hydra.sweep.dir={sweep}",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
        env={**_no_slurm_env(), "PYTHONPATH": str(REPO)},
    )
    assert res.returncode == 0, res.stderr[-3000:]
    assert any(
        (sweep / ".submitit").iterdir()
    )  # the points ran as submitit jobs, not in Hydra's basic launcher
    df = load(sweep)
    assert sorted(df.seq_len) == [64, 128]
    assert (df.status == "ok").all(), df[["seq_len", "status", "error"]]
    assert (df.method == "ulysses").all() and (df.world_size == 2).all() and (df.step_time_ms > 0).all()
