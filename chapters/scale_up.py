"""Train the book's VAE (chapter 4) on one device, on a GPU, or on several processes and machines.

One process, on the fastest device present (CUDA, then Apple's MPS, then the CPU):

    python chapters/scale_up.py --epochs 10

Several processes with torchrun, which starts one copy of this script per process and tells
each one its rank (RANK, LOCAL_RANK, WORLD_SIZE in the environment):

    torchrun --standalone --nproc_per_node=2 chapters/scale_up.py --epochs 10     # 2 processes, 1 machine
    torchrun --nnodes=2 --nproc_per_node=8 --rdzv-backend=c10d \\
        --rdzv-endpoint=HOST:29500 --rdzv-id=vae1 chapters/scale_up.py --epochs 10  # on each of 2 machines

What stays the same whatever the number of processes N:

* The global batch. Each process takes global_batch / N images per step, and
  DistributedDataParallel (DDP) averages the gradients of the N processes, so each step
  computes the gradient of the mean loss over the same global batch as one process would.
* The data order. A DistributedSampler shuffles the indices with the same seed on every
  process (seed + epoch: call set_epoch every epoch) and gives process r every N-th index
  from position r; read in steps of global_batch / N, the N processes' batches of step s
  together are exactly the global batch that one process would take at step s.
* The random numbers. The model is initialised from the same seed on every process (and DDP
  copies rank 0's weights to the others anyway). The VAE's noise epsilon is drawn for the
  whole global batch from a generator seeded with (seed, step), and each process takes the
  rows of its own images. The usual recipe, seed + rank, would give each process different
  noise: just as good for training, but then one process and N processes would draw different
  noise and could not be compared number for number. Nothing random depends on a generator's
  state, so a checkpoint needs no RNG state: a resumed run draws the same numbers.

Checkpoints (state dicts only, loaded with torch.load(..., weights_only=True)) are written by
rank 0 to --checkpoint-dir/checkpoint.pt; with --resume a run continues from that file if it
exists, which is also what makes torchrun's elastic restarts (--max-restarts) useful.
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import BatchSampler, DistributedSampler

sys.path.insert(0, str(Path(__file__).resolve().parent))  # genbook.py sits next to this file
import genbook  # noqa: E402

Z_DIM = 32            # the VAE of chapter 4: a 32-dimensional code,
HIDDEN = (512, 256)   # hidden layers of 512 and 256 units, a Bernoulli decoder


# ---------------------------------------------------------------- the model (chapter 4's VAE)

class VAE(nn.Module):
    """Chapter 4's VAE, with one change: the noise epsilon is an argument of forward().

    Drawing it outside the model lets us choose which random numbers each process uses.
    """

    def __init__(self, z_dim=Z_DIM, hidden=HIDDEN):
        super().__init__()
        self.encoder = genbook.mlp([784, *hidden, 2 * z_dim])
        self.decoder = genbook.mlp([z_dim, *hidden[::-1], 784])  # Bernoulli logits

    def forward(self, x, eps):
        mu, logvar = self.encoder(x).chunk(2, dim=-1)
        z = mu + (0.5 * logvar).exp() * eps  # the reparameterisation trick
        return self.decoder(z), mu, logvar


def negative_elbo(logits, x, mu, logvar):
    """Chapter 4's loss: summed binary cross-entropy plus the Gaussian KL, averaged over images."""
    recon = F.binary_cross_entropy_with_logits(logits, x, reduction="none").sum(-1)
    kl = 0.5 * (mu.pow(2) + logvar.exp() - 1 - logvar).sum(-1)
    return (recon + kl).mean()


def step_noise(seed, step, global_batch, z_dim=Z_DIM):
    """The noise epsilon for every image of the global batch of one step: a function of
    (seed, step) only, the same on every process and in every run."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + step)
    return torch.randn(global_batch, z_dim, generator=g)


def held_out_loss(model, x, seed=0, batch_size=1000):
    """Mean negative ELBO of images x (N, 784) with one fixed draw of noise: a held-out score."""
    device = next(model.parameters()).device
    g = torch.Generator().manual_seed(seed)
    total = 0.0
    model.eval()
    with torch.no_grad():
        for i in range(0, len(x), batch_size):
            xb = x[i:i + batch_size].to(device)
            eps = torch.randn(len(xb), Z_DIM, generator=g).to(device)
            logits, mu, logvar = model(xb, eps)
            total += negative_elbo(logits, xb, mu, logvar).item() * len(xb)
    return total / len(x)


# ---------------------------------------------------------------- settings

def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--epochs", type=int, default=10, help="passes over the training data")
    p.add_argument("--global-batch-size", type=int, default=256,
                   help="images per optimiser step, summed over all processes")
    p.add_argument("--lr", type=float, default=1e-3, help="Adam's learning rate")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None, help="cpu, cuda, mps (default: the fastest present)")
    p.add_argument("--amp", choices=["auto", "off", "bf16", "fp16"], default="auto",
                   help="mixed precision; auto: bf16 (or fp16 with a GradScaler) on CUDA, off elsewhere")
    p.add_argument("--checkpoint-dir", default=None, help="where rank 0 writes checkpoint.pt")
    p.add_argument("--checkpoint-every", type=int, default=0,
                   help="also checkpoint every this many steps (0: at the end of each epoch only)")
    p.add_argument("--resume", action="store_true", help="continue from --checkpoint-dir/checkpoint.pt if it exists")
    p.add_argument("--log-every", type=int, default=50, help="rank 0 prints the mean loss every this many steps")
    # For tests and short demonstrations:
    p.add_argument("--data-limit", type=int, default=0, help="train on the first N images only")
    p.add_argument("--max-steps", type=int, default=0, help="stop after this many steps in all")
    p.add_argument("--stop-after-step", type=int, default=0,
                   help="simulate a crash: exit abruptly after this step (first attempt only)")
    p.add_argument("--save-rank-weights", action="store_true",
                   help="each rank writes its final weights to --checkpoint-dir/weights-rankR.pt")
    return p.parse_args(argv)


def amp_settings(device, amp):
    """The autocast dtype (None: full precision) and whether a GradScaler is needed."""
    if amp == "auto":
        if device.type == "cuda":
            # Native bfloat16 needs compute capability 8.0 (A100 and later); older GPUs only
            # emulate it, slowly, so they get float16 with a scaler.
            amp = "bf16" if torch.cuda.is_bf16_supported(including_emulation=False) else "fp16"
        else:
            amp = "off"  # bf16 autocast on a CPU is possible (--amp bf16) but rarely faster
    if amp == "fp16" and device.type != "cuda":
        # A design choice of this script, not a limit of PyTorch: on a CPU, float16 is slow and
        # bfloat16 needs no scaler.
        raise ValueError("--amp fp16 is for CUDA in this script; on a CPU try --amp bf16")
    dtype = {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}[amp]
    # float16 has a narrow range: small gradients underflow to zero unless the loss is scaled
    # up before backward() and the gradients scaled down before the step. bfloat16 has
    # float32's range, so it needs no scaler.
    return dtype, dtype is torch.float16


# ---------------------------------------------------------------- processes

def log_all(message):
    """Print from any rank (train() logs from rank 0 only)."""
    print(message, flush=True)


def start_processes(device_name):
    """Rank, world size and device of this process; joins the process group under torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))  # torchrun sets these three
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))  # rank within this machine
    device = torch.device(device_name) if device_name else genbook.pick_device()
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)  # one GPU per process
        torch.cuda.set_device(device)
    if world > 1:
        if device.type == "mps":  # no process-group backend for MPS: several processes share the CPU
            log_all(f"rank {rank}: MPS cannot join a process group; using the CPU (gloo) instead")
            device = torch.device("cpu")
        # NCCL talks GPU to GPU; gloo works on CPU tensors. MASTER_ADDR and MASTER_PORT,
        # which say where to meet, come from torchrun through the environment.
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo",
                                device_id=device if device.type == "cuda" else None)
    return rank, world, device


def checkpoint_path(args):
    return Path(args.checkpoint_dir) / "checkpoint.pt" if args.checkpoint_dir else None


def save_checkpoint(path, model, opt, scaler, step, args):
    """Rank 0 writes state dicts only (no pickled objects), to a temporary file first, so
    that a crash while writing never leaves a half-written checkpoint behind."""
    state = {"model": model.state_dict(), "optimizer": opt.state_dict(), "scaler": scaler.state_dict(),
             "step": step, "seed": args.seed, "global_batch_size": args.global_batch_size}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)  # atomic: the old checkpoint or the new one, never half of one


def load_checkpoint(path, model, opt, scaler, args, device):
    """Every rank reads the same file; returns the number of steps already done."""
    state = torch.load(path, map_location=device, weights_only=True)
    if (state["seed"], state["global_batch_size"]) != (args.seed, args.global_batch_size):
        raise ValueError("the checkpoint was made with another seed or global batch size")
    model.load_state_dict(state["model"])
    opt.load_state_dict(state["optimizer"])  # Adam's state, and the learning rate it was at
    if state["scaler"] and scaler.is_enabled():  # empty when the run that saved it had no scaler
        scaler.load_state_dict(state["scaler"])
    return state["step"]


# ---------------------------------------------------------------- training

def train(args):
    """Train; return a summary (loss history, time, steps) and the model (on rank 0: the result)."""
    rank, world, device = start_processes(args.device)
    log = print if rank == 0 else (lambda *a, **k: None)  # only rank 0 talks
    if args.global_batch_size % world:
        raise ValueError(f"the global batch {args.global_batch_size} must split evenly over {world} processes")
    local_batch = args.global_batch_size // world
    amp_dtype, use_scaler = amp_settings(device, args.amp)

    # Data: every process loads the whole training set and reads only the indices it is given.
    x, _ = genbook.load_fashion_mnist(train=True)
    x = x.reshape(-1, 784)
    if args.data_limit:
        x = x[:args.data_limit].clone()  # a copy, so that the full set can be freed
    sampler = DistributedSampler(x, num_replicas=world, rank=rank, shuffle=True,
                                 seed=args.seed, drop_last=True)
    # BatchSampler cuts this process's indices into batches (a DataLoader over a TensorDataset
    # with this sampler would do the same, copying image by image).
    batches = BatchSampler(sampler, local_batch, drop_last=True)
    steps_per_epoch = len(batches)
    total_steps = args.epochs * steps_per_epoch
    if args.max_steps:
        total_steps = min(total_steps, args.max_steps)

    # Model and optimiser: the same seed on every process gives the same initial weights.
    torch.manual_seed(args.seed)
    model = VAE().to(device)
    with torch.no_grad():  # chapter 4's start: the decoder's output bias at the mean image
        model.decoder[-1].bias.copy_(torch.logit(x.mean(0).clamp(1e-3, 1 - 1e-3)).to(device))
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    scaler = torch.amp.GradScaler(device.type, enabled=use_scaler)

    step = 0
    path = checkpoint_path(args)
    if args.resume and path is not None and path.exists():
        step = load_checkpoint(path, model, opt, scaler, args, device)
        log(f"resumed from {path.name} at step {step}")
    # DDP copies rank 0's weights to every process, then averages the gradients during
    # backward(), bucket by bucket, while the rest of backward() is still running.
    net = DDP(model, device_ids=[device.index] if device.type == "cuda" else None) if world > 1 else model
    log(f"{world} process(es) on {device.type}, {local_batch} images each per step "
        f"(global batch {args.global_batch_size}), mixed precision: {amp_dtype or 'off'}")

    history, running, since = [], torch.zeros((), device=device), 0
    restart = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))  # set by torchrun
    start = time.perf_counter()
    net.train()
    while step < total_steps:
        epoch, skip = divmod(step, steps_per_epoch)
        sampler.set_epoch(epoch)  # a new shuffle each epoch, the same on every process
        # Resuming in the middle of an epoch: skip the batches that were already trained on.
        for idx in itertools.islice(batches, skip, None):
            xb = x[idx].to(device)
            eps = step_noise(args.seed, step, args.global_batch_size)[rank::world].to(device)
            with torch.autocast(device.type, dtype=amp_dtype or torch.bfloat16, enabled=amp_dtype is not None):
                logits, mu, logvar = net(xb, eps)
            loss = negative_elbo(logits.float(), xb, mu.float(), logvar.float())  # the loss in float32
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()  # without a scaler, scale() returns the loss as it is
            scaler.step(opt)
            scaler.update()
            step += 1
            running += loss.detach()  # no .item() here: that would wait for the GPU every step
            since += 1

            if step % args.log_every == 0 or step == total_steps:
                if world > 1:  # the mean over processes: the loss of the global batch
                    dist.all_reduce(running)
                    running /= world
                history.append((step, running.item() / since))
                log(f"step {step:5d}/{total_steps}  epoch {epoch + 1}  loss {history[-1][1]:8.2f}  "
                    f"({time.perf_counter() - start:.1f} s)", flush=True)
                running.zero_()
                since = 0
            end_of_epoch = step % steps_per_epoch == 0
            if path is not None and rank == 0 and (end_of_epoch or step == total_steps or
                                                   (args.checkpoint_every and step % args.checkpoint_every == 0)):
                save_checkpoint(path, model, opt, scaler, step, args)
            if args.stop_after_step == step and restart == 0:
                if world > 1:
                    dist.barrier()  # let rank 0 finish writing any checkpoint first
                print(f"rank {rank}: simulated crash after step {step}", flush=True)
                os._exit(1)  # no clean-up at all, as if the machine had died
            if step == total_steps:
                break
    seconds = time.perf_counter() - start

    summary = {"world_size": world, "device": device.type, "steps": step, "seconds": seconds,
               "global_batch_size": args.global_batch_size, "history": history,
               "final_loss": history[-1][1] if history else None}
    if args.checkpoint_dir:
        if args.save_rank_weights:  # for the tests: does every rank hold the same weights?
            Path(args.checkpoint_dir).mkdir(parents=True, exist_ok=True)  # rank 0 may not have yet
            torch.save(model.state_dict(), Path(args.checkpoint_dir) / f"weights-rank{rank}.pt")
        if rank == 0:
            (Path(args.checkpoint_dir) / "summary.json").write_text(json.dumps(summary))
    if world > 1:
        dist.destroy_process_group()
    log(f"done: {step} steps in {seconds:.1f} s")
    return summary, model


if __name__ == "__main__":
    train(parse_args())
