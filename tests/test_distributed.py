"""The appendix's training script (chapters/scale_up.py) under torchrun, on the CPU.

Two processes (gloo, localhost only, one thread each) train the VAE for 24 steps on the
first 1,024 training images, global batch 64 (two epochs of 16 steps, so that the shuffle of
the second epoch and a resume across the epoch boundary are exercised). Then:

* both ranks hold bitwise identical weights (DDP averages the gradients, so every rank takes
  the same step);
* one process with the same global batch and data order computes the same losses and ends
  with the same weights, within a tolerance: the two processes sum each gradient in two
  halves and then add the halves, one process sums it in one pass, and float addition is not
  associative. The per-step losses agree to 1e-5 relative; the weights to 1e-4 absolute, a
  tenth of one Adam step (lr 1e-3): Adam divides each gradient by its running RMS, so a
  rounding difference in a tiny gradient can move a weight by a visible fraction of a step
  (measured: 1.3e-5 after 24 steps);
* a run that crashes after step 14 (its last checkpoint at step 12) and is restarted by
  torchrun (--max-restarts=1) resumes from the checkpoint and ends with bitwise the same
  weights as the uninterrupted run: with one thread per process every sum is computed in the
  same order, and the noise and the data order depend only on (seed, step);
* in one process, a run stopped at step 10 and resumed to step 24 equals a run of 24 steps.

About 30 s on an idle 2-core machine (each torchrun launch starts three Python processes
that import torch).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "chapters" / "scale_up.py"
sys.path.insert(0, str(ROOT / "chapters"))
import scale_up  # noqa: E402

BASE = ["--device", "cpu", "--data-limit", "1024", "--global-batch-size", "64", "--lr", "1e-3",
        "--log-every", "1", "--save-rank-weights"]
ARGS = BASE + ["--max-steps", "24"]
LOSS_RTOL = 1e-5
WEIGHT_ATOL = 1e-4


def torchrun(args, tmp: Path, extra=()) -> subprocess.CompletedProcess:
    """`torchrun --standalone --nproc_per_node=2 scale_up.py ARGS` on the CPU, one thread per process."""
    env = dict(os.environ, OMP_NUM_THREADS="1", GENBOOK_THREADS="1", TQDM_DISABLE="1",
               # torch 2.14: with the rendezvous store shared with the workers (the default), a
               # restarted gloo group can read the dead workers' addresses and fail to connect
               # (pytorch/pytorch#135712); a store of their own avoids it.
               TORCH_DISABLE_SHARE_RDZV_TCP_STORE="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", *extra,
           str(SCRIPT), *args, "--checkpoint-dir", str(tmp)]
    run = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=tmp)
    assert run.returncode == 0, f"torchrun failed:\n{run.stdout[-3000:]}\n{run.stderr[-3000:]}"
    return run


def weights(path: Path) -> dict:
    return torch.load(path, weights_only=True)


def max_difference(a: dict, b: dict) -> float:
    return max((a[k] - b[k]).abs().max().item() for k in a)


def bitwise_equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ddp")
    run = torchrun(ARGS, tmp)
    return tmp, run


@pytest.fixture
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_ranks_hold_identical_weights(two_processes):
    tmp, run = two_processes
    summary = json.loads((tmp / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["steps"] == 24
    assert bitwise_equal(weights(tmp / "weights-rank0.pt"), weights(tmp / "weights-rank1.pt"))
    # Only rank 0 logs: one line per step, not two.
    assert run.stdout.count("step    24/24") == 1, run.stdout


def test_two_processes_match_one_with_the_same_global_batch(two_processes, tmp_path, one_thread):
    tmp, _ = two_processes
    two = json.loads((tmp / "summary.json").read_text())
    one, _ = scale_up.train(scale_up.parse_args(ARGS + ["--checkpoint-dir", str(tmp_path)]))
    assert one["world_size"] == 1 and one["steps"] == two["steps"] == 24
    for (s1, l1), (s2, l2) in zip(one["history"], two["history"], strict=True):
        assert s1 == s2 and abs(l1 - l2) <= LOSS_RTOL * abs(l1), (s1, l1, l2)
    assert one["history"][-1][1] < one["history"][0][1] - 20, "the VAE did not learn"
    difference = max_difference(weights(tmp_path / "weights-rank0.pt"), weights(tmp / "weights-rank0.pt"))
    assert difference < WEIGHT_ATOL, difference


def test_a_killed_run_resumes_to_the_same_weights(two_processes, tmp_path):
    tmp, _ = two_processes
    run = torchrun(ARGS + ["--resume", "--checkpoint-every", "4", "--stop-after-step", "14"], tmp_path,
                   extra=["--max-restarts=1"])
    assert "simulated crash after step 14" in run.stdout
    assert "resumed from checkpoint.pt at step 12" in run.stdout
    assert bitwise_equal(weights(tmp_path / "weights-rank0.pt"), weights(tmp / "weights-rank0.pt"))
    assert bitwise_equal(weights(tmp_path / "weights-rank1.pt"), weights(tmp / "weights-rank0.pt"))


def test_one_process_resumes_exactly(tmp_path, one_thread):
    whole, resumed = tmp_path / "whole", tmp_path / "resumed"
    scale_up.train(scale_up.parse_args(ARGS + ["--checkpoint-dir", str(whole)]))
    first, _ = scale_up.train(scale_up.parse_args(BASE + ["--max-steps", "10", "--checkpoint-dir", str(resumed)]))
    assert first["steps"] == 10
    scale_up.train(scale_up.parse_args(ARGS + ["--checkpoint-dir", str(resumed), "--resume"]))
    state = torch.load(resumed / "checkpoint.pt", weights_only=True)
    assert state["step"] == 24
    assert bitwise_equal(weights(resumed / "weights-rank0.pt"), weights(whole / "weights-rank0.pt"))
