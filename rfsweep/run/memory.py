"""The memory plan of a training job: bytes per GPU for weights, gradients, optimizer state, EMA and activations,
under DDP or FSDP, with or without activation checkpointing, from the config alone (the backbone built on the meta
device). `dry_run=true` prints it; `rfsweep.run.preflight` refuses, before any job starts, a GPU config whose
plan exceeds `cluster.gpu_memory_gb`.

- Weights, gradients, the EMA copy: fp32, 4 bytes per parameter each; AdamW's two moments: 8. Under DDP every GPU
  holds all of them (20 bytes per parameter); under FSDP each holds 1 / GPUs of them, plus the gathered fp32 weights
  of the unit being computed and the next one (FSDP2 prefetches: two blocks, and the root's own parameters).
- Activations: the bytes autograd saves for backward, counted on the meta device for one sample of this backbone at
  this size (exact for the eager fp32 model, with PyTorch's math attention), times the micro-batch per GPU
  (batch / GPUs / accumulation). On a GPU in bf16 the count is halved and the attention matrices (which flash and
  cuDNN attention never store) are left out; torch.compile saves less still, so this is an upper estimate there.
  With `backbone.grad_checkpointing` the saves are the blocks' inputs plus one block recomputed at a time.
"""

from __future__ import annotations

import json
import multiprocessing
from dataclasses import dataclass
from functools import lru_cache

from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from rfsweep.errors import ConfigError, DataError
from rfsweep.run.builders import context_len, latent_shape

GB = 1e9


@dataclass(frozen=True)
class MemoryPlan:
    params: int
    gpus: int
    strategy: str
    micro_batch: int
    weights: float  # bytes per GPU
    gradients: float
    optimizer: float
    ema: float
    activations: float

    @property
    def total(self) -> float:
        return self.weights + self.gradients + self.optimizer + self.ema + self.activations

    def describe(self) -> str:
        parts = ", ".join(f"{k} {getattr(self, k) / GB:.1f}" for k in
                          ("weights", "gradients", "optimizer", "ema", "activations"))
        return (f"{self.total / GB:.1f} GB per GPU ({self.strategy} over {self.gpus} GPUs, micro-batch "
                f"{self.micro_batch}: {parts})")


def _saved_bytes(net, shape, tokens: int, context_dim: int, pooled_dim: int) -> tuple[int, int]:
    """(bytes autograd saves for one sample, of which attention probabilities), counted on the meta device."""
    import torch  # deferred: torch (~1.5 s), not needed by --help (rfsweep.run.preflight imports this module)

    params = {id(p) for p in net.parameters()}
    total = probs = 0

    def pack(t):
        nonlocal total, probs
        if id(t) in params or (t._base is not None and id(t._base) in params):  # weights (and their views)
            return t
        n = t.numel() * t.element_size()
        total += n
        if t.grad_fn is not None and "Softmax" in type(t.grad_fn).__name__:
            probs += n
        return t

    with torch.device("meta"):
        x, t = torch.zeros(1, *shape), torch.full((1,), 0.5)
        ctx, pooled = torch.zeros(1, tokens, context_dim), torch.zeros(1, pooled_dim)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        net(x, t, ctx, pooled)
    return total, probs


@lru_cache(maxsize=32)
def _measure(backbone_json: str, shape: tuple, tokens: int, context_dim: int, pooled_dim: int) -> dict:
    import torch  # deferred: torch (~1.5 s), not needed by --help

    from rfsweep.backbones.flops import parameter_count  # deferred: rfsweep.backbones imports torch

    node = {k: v for k, v in json.loads(backbone_json).items() if k != "label"}
    out = {}
    for ckpt in (False, True):
        with torch.device("meta"):
            net = instantiate({**node, "grad_checkpointing": ckpt})
        out[ckpt] = _saved_bytes(net, shape, tokens, context_dim, pooled_dim)
    blocks = list(getattr(net, "blocks", []))
    block_params = [parameter_count(b) for b in blocks]
    out.update(params=parameter_count(net), block_params=max(block_params, default=0),
               root_params=parameter_count(net) - sum(block_params), depth=len(blocks))
    return out


def memory_plan(cfg: DictConfig, gpus: int | None = None) -> MemoryPlan:
    """The plan of a job's config over `gpus` GPUs (default devices x nodes)."""
    tr = cfg.trainer
    gpus = gpus or int(tr.devices) * int(tr.num_nodes)
    backbone = OmegaConf.to_container(cfg.backbone, resolve=True)
    m = _measure(json.dumps(backbone, sort_keys=True), tuple(latent_shape(cfg)), context_len(cfg),
                 int(cfg.conditioning.context_dim), int(cfg.conditioning.pooled_dim))
    micro = max(1, int(tr.batch_size) // (gpus * int(tr.accumulate_grad_batches)))
    ckpt = bool(backbone.get("grad_checkpointing", False))
    saved, probs = m[ckpt]
    if ckpt and m["depth"]:  # one block recomputed at a time, with its own saves
        saved += (m[False][0] - m[True][0]) / m["depth"]
    if tr.accelerator == "gpu":
        saved = (saved - probs) * (0.5 if "16" in str(tr.precision) else 1.0)
    p = m["params"]
    if tr.strategy == "fsdp":
        shard = p / gpus
        gathered = 4 * (m["root_params"] + 2 * m["block_params"])
        weights, grads, optim, ema = 4 * shard + gathered, 4 * shard, 8 * shard, 4 * shard
    else:
        weights, grads, optim, ema = 4 * p, 4 * p, 8 * p, 4 * p
    ema *= 1 + len(cfg.ema.sigma_rels or [])  # the paper's EMA and each post-hoc EMA: a float32 copy each
    return MemoryPlan(p, gpus, str(tr.strategy), micro, weights, grads, optim, ema, saved * micro)


def check_fits(cfg: DictConfig) -> None:
    """Refuse (ConfigError, one line) a GPU config whose plan exceeds the GPUs' memory."""
    if cfg.trainer.accelerator != "gpu":
        return
    plan = memory_plan(cfg)
    limit = float(cfg.cluster.gpu_memory_gb) * GB
    if plan.total > limit:
        raise ConfigError(f"config error: the memory plan needs {plan.describe()} on {cfg.cluster.gpu_memory_gb:g} GB "
                          f"GPUs (cluster.gpu_memory_gb) (allowed: a plan that fits: trainer.strategy=fsdp, "
                          f"backbone.grad_checkpointing=true, more GPUs, or trainer.accumulate_grad_batches)")


# Host memory (the node's RAM, what SLURM's --mem limits). What one rank's process holds on the CPU at its peak:
# torch and the libraries (PROCESS_GB: a CPU training job's peak RSS measured on this project's CPU machine is 1.3 GB;
# a CUDA process also maps the CUDA libraries: 4 GB allowed, not measured here), the backbone as it is built before
# it moves to its GPU or is sharded, the EMA copy, the best weights gathered on rank 0 to be written
# (best.safetensors: raw and EMA weights, fp32), and the pre-encoded reader's caption tables (one byte buffer and
# two arrays, which the rank's forked loader workers share: nothing writes to their pages). Under FSDP rank 0 alone
# builds the whole backbone (the other ranks build it on the meta device and receive their shards from rank 0), and
# every EMA is made from the shards. Two more terms per rank:
# - Its training loader's workers (`trainer.num_workers` forked processes; the validation loader has none). A forked
#   worker shares its rank's pages until it writes to them, and SLURM's cgroup charges a shared page once. A worker
#   writes the headers of the Python objects it touches (reference counts), and of every object at a full garbage
#   collection: measured on this project's CPU machine with a CPU job on the shapes set, 24 MB private per worker
#   after 3000 steps, and 135 MB in a forked copy of a job's process (torch, Lightning, transformers, rfsweep loaded)
#   after a full collection: WORKER_GB allows 0.2 GB. Plus the batches a worker has ready (PREFETCH, torch's default
#   prefetch_factor), handed over in shared memory, which the cgroup charges too (`sample_bytes`). Under a start
#   method other than fork (Python 3.14's default is forkserver) each worker unpickles its own copy of the dataset,
#   the reader's tables included.
# - Under FSDP on GPUs, Lightning copies the rank's shards of the module's state (the weights, the EMA, each post-hoc
#   EMA) and of AdamW's moments to the CPU at each checkpoint before writing them (ModelParallelStrategy asks torch's
#   state dicts for `cpu_offload`): every rank at once, (4 (2 + post-hoc EMAs) + 8) bytes per parameter / ranks, for
#   the checkpoint's duration. On CPUs those tensors are there already; under DDP `torch.save` copies one at a time.
PROCESS_GB = {"cpu": 2.0, "gpu": 4.0}
WORKER_GB = 0.2
PREFETCH = 2  # batches each loader worker has ready (torch's prefetch_factor, which rfsweep.data.datamodule keeps)


def sample_bytes(cfg: DictConfig) -> float:
    """Bytes of one training sample as a loader worker hands it over: pre-encoded, fp16 latents and text embeddings (at
    most the assembled context's tokens x context_dim, and the pooled vector); read raw, its fp32 image."""
    if cfg.data.name == "precomputed":
        c, h, w = latent_shape(cfg)
        tokens = context_len(cfg) * int(cfg.conditioning.context_dim) + int(cfg.conditioning.pooled_dim)
        return 2.0 * (c * h * w + tokens)
    return 4.0 * 3 * int(cfg.data.resolution) ** 2


@dataclass(frozen=True)
class HostPlan:
    ranks: int  # ranks on one node (trainer.devices)
    rank0: float  # bytes at rank 0's peak
    other: float  # bytes at another rank's peak
    tables: float  # the reader's tables, per rank (included above, as are the two below)
    num_workers: int  # loader workers per rank (trainer.num_workers)
    workers: float  # the rank's loader workers together
    checkpoint: float  # the CPU copy of the rank's shards at a checkpoint (FSDP on GPUs)

    @property
    def total(self) -> float:
        return self.rank0 + (self.ranks - 1) * self.other

    def describe(self) -> str:
        return (f"{self.total / GB:.1f} GB of host memory per node ({self.ranks} rank(s): rank 0 "
                f"{self.rank0 / GB:.1f}, the others {self.other / GB:.1f} each; per rank: reader tables "
                f"{self.tables / GB:.2f}, {self.num_workers} loader workers {self.workers / GB:.2f}, checkpoint copy "
                f"{self.checkpoint / GB:.1f})")


def host_plan(cfg: DictConfig, plan: MemoryPlan | None = None) -> HostPlan:
    """The host memory a node needs for this job's ranks (see PROCESS_GB's comment); `plan`: the job's
    `memory_plan(cfg)` where the caller has it already."""
    tr = cfg.trainer
    plan = plan or memory_plan(cfg)
    p = plan.params
    world = int(tr.devices) * int(tr.num_nodes)
    tables = 0.0
    if cfg.data.name == "precomputed" and cfg.data.path:
        from rfsweep.data.precomputed import table_bytes  # deferred: torch and safetensors, not needed by --help

        try:
            tables = float(table_bytes(cfg.data.path, "train"))
        except (DataError, OSError):
            tables = 0.0  # no folder yet: the data check refuses the job itself
    start = multiprocessing.get_start_method(allow_none=True) or multiprocessing.get_all_start_methods()[0]
    per_worker = (WORKER_GB * GB + PREFETCH * plan.micro_batch * sample_bytes(cfg)
                  + (tables if start != "fork" else 0.0))  # the dataset's own copy, unpickled
    workers = int(tr.num_workers) * per_worker
    base = PROCESS_GB[str(tr.accelerator)] * GB + tables + workers
    best = 8.0 * p  # rank 0 gathers the raw and EMA weights to write best.safetensors (the post-hoc EMAs stay out)
    copies = 4.0 * p * (2 + len(cfg.ema.sigma_rels or []))  # the weights, the EMA and each post-hoc EMA
    checkpoint = 0.0
    if tr.strategy == "fsdp" and world > 1:
        shards = copies / world
        if tr.accelerator == "gpu":  # a checkpoint's CPU copy of the rank's shards (on a GPU, their only host copy)
            checkpoint = (copies + 8.0 * p) / world
        rank0, other = base + max(4.0 * p + shards, best, checkpoint), base + max(shards, checkpoint)
    else:
        rank0, other = base + max(copies, best), base + copies
    if tr.accelerator != "gpu":  # training on the CPU: gradients and AdamW's moments live there too
        state = 12.0 * p / (world if tr.strategy == "fsdp" else 1)
        rank0, other = rank0 + state, other + state
    return HostPlan(int(tr.devices), rank0, other if tr.devices > 1 else 0.0, tables, int(tr.num_workers), workers,
                    checkpoint)


def launcher_mem_gb() -> float | None:
    """The node memory the sweep's launcher asks for (`hydra.launcher.mem_gb`, SLURM), if any."""
    if not HydraConfig.initialized():
        return None
    launcher = HydraConfig.get().get("launcher")
    return launcher.get("mem_gb") if launcher is not None else None


def check_host_fits(cfg: DictConfig, mem_gb: float | None) -> None:
    """Refuse (ConfigError, one line) a job whose host plan exceeds the node memory it asks SLURM for."""
    if not mem_gb:
        return
    plan = host_plan(cfg)
    if plan.total > float(mem_gb) * GB:
        raise ConfigError(f"config error: the host memory plan needs {plan.describe()}, more than "
                          f"hydra.launcher.mem_gb={mem_gb:g} (allowed: a plan that fits: a larger "
                          f"hydra.launcher.mem_gb, trainer.strategy=fsdp, fewer trainer.num_workers, or fewer ranks "
                          f"per node)")
