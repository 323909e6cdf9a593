"""Data-parallel training: two CPU processes (gloo) must end with identical weights."""
import json
import os
import socket
import subprocess
import sys

import torch
import torch.multiprocessing as mp

from cnnops.tools import train
from cnnops.models import lenet_bn

ARGS = ["lenet_bn", "--epochs", "2", "--limit", "64", "--batch-size", "16", "--backend",
        "torch", "--quiet"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def worker(rank, world_size, port, out):
    # what torchrun sets for each process
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world_size),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    parser = __import__("argparse").ArgumentParser()
    train.configure(parser)
    torch.set_num_threads(1)
    record, model = train.execute(parser.parse_args(ARGS + ["--out", out, "--device", "cpu"]))
    torch.save({"parameters": dict(model.named_parameters()), "record": record},
               os.path.join(out, f"rank{rank}.pt"))


def test_two_processes_end_with_identical_weights(tmp_path):
    mp.spawn(worker, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True)
    rank0, rank1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in (0, 1))
    # every parameter equal bit for bit: gradients were averaged before each step
    for name, p0 in rank0["parameters"].items():
        assert torch.equal(p0, rank1["parameters"][name]), name
    # ... and trained: not the initial weights
    torch.manual_seed(0)
    initial = lenet_bn()  # the factory initialises as train does
    assert not torch.equal(initial[0].weight, rank0["parameters"]["0.weight"])
    # the metrics cover both shards, and only rank 0 wrote the log
    for record in (rank0["record"], rank1["record"]):
        assert record["world_size"] == 2
        assert [h["examples"] for h in record["history"]] == [64, 64]
        assert record["test_acc"] == rank0["record"]["test_acc"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "lenet_bn-torch-digits.ckpt", "lenet_bn-torch-digits.json", "lenet_bn-torch-digits.png",
        "rank0.pt", "rank1.pt"]


def test_torchrun_command_line(tmp_path):
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
               f"--master-port={free_port()}", "-m", "cnnops", "train", *ARGS,
               "--epochs", "1", "--out", str(tmp_path)]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    # one header and one summary: rank 1 printed nothing
    assert result.stdout.count("training lenet_bn") == 1, result.stdout
    assert "x 2 processes" in result.stdout
    log = json.loads((tmp_path / "lenet_bn-torch-digits.json").read_text())
    assert log["world_size"] == 2 and log["history"][0]["examples"] == 64
