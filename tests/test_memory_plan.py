"""The memory plan: its activation count is what autograd saves on a real forward pass; its state terms follow the
strategy; a config that cannot fit its GPUs (the paper's depth 38 under DDP on 80 GB) is refused before any job."""

from __future__ import annotations

import pytest
import torch

from rfsweep.errors import ConfigError
from rfsweep.run.memory import _saved_bytes, memory_plan
from rfsweep.run.preflight import preflight
from tests.helpers import compose_cfg

PAPER = ["trainer=gpu", "optimizer=adamw", "ema=paper", "conditioning=sd3", "autoencoder=sd3_vae",
         "data.resolution=256", "backbone.width=null", "backbone.heads=null", "backbone.qk_norm=true"]


def test_activation_count_on_meta_is_what_a_real_forward_saves():
    from rfsweep.backbones import build_backbone

    kw = dict(in_channels=4, context_dim=32, pooled_dim=16, depth=3, width=64, heads=2)
    with torch.device("meta"):
        meta = build_backbone("mmdit", **kw)
    counted = _saved_bytes(meta, (4, 8, 8), 6, 32, 16)
    real = build_backbone("mmdit", **kw)
    params = {id(p) for p in real.parameters()}
    total = 0

    def pack(t):
        nonlocal total
        if id(t) not in params and not (t._base is not None and id(t._base) in params):
            total += t.numel() * t.element_size()
        return t

    from torch.nn.attention import SDPBackend, sdpa_kernel

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), sdpa_kernel(SDPBackend.MATH):
        real(torch.randn(1, 4, 8, 8), torch.rand(1), torch.randn(1, 6, 32), torch.randn(1, 16)).sum().backward()
    assert counted[0] == total and 0 < counted[1] < total  # the meta device runs the math attention too


def test_strategy_and_checkpointing_shrink_the_plan():
    cfg = compose_cfg([*PAPER, "backbone.depth=24", "trainer.batch_size=64"])
    ddp = memory_plan(cfg)
    assert ddp.params == pytest.approx(2.03e9, rel=0.01) and ddp.weights == 4 * ddp.params
    assert ddp.optimizer == 8 * ddp.params and ddp.micro_batch == 64
    fsdp = memory_plan(compose_cfg([*PAPER, "backbone.depth=24", "trainer.batch_size=64", "trainer.strategy=fsdp",
                                    "trainer.devices=8"]))
    assert fsdp.optimizer == pytest.approx(ddp.optimizer / 8) and fsdp.micro_batch == 8
    ckpt = memory_plan(compose_cfg([*PAPER, "backbone.depth=24", "trainer.batch_size=64",
                                    "backbone.grad_checkpointing=true"]))
    assert ckpt.activations < ddp.activations / 4


def test_a_config_that_cannot_fit_is_refused_in_one_line():
    with pytest.raises(ConfigError) as e:  # depth 38 (8B) under DDP: 20 bytes per parameter is 160 GB alone
        preflight(compose_cfg([*PAPER, "backbone.depth=38"]))
    msg = str(e.value)
    assert "memory plan" in msg and "80 GB" in msg and "trainer.strategy=fsdp" in msg and "\n" not in msg
    preflight(compose_cfg([*PAPER, "backbone.depth=38", "trainer.strategy=fsdp", "trainer.devices=8",
                          "trainer.num_nodes=8", "backbone.grad_checkpointing=true"]))  # 64 GPUs, sharded: fits


def test_the_host_plan_counts_what_each_rank_holds_on_the_cpu():
    from rfsweep.run.memory import GB, PREFETCH, WORKER_GB, host_plan

    depth24 = [*PAPER, "backbone.depth=24", "trainer.batch_size=64", "trainer.devices=8"]
    ddp, fsdp = host_plan(compose_cfg(depth24)), host_plan(compose_cfg([*depth24, "trainer.strategy=fsdp"]))
    p = memory_plan(compose_cfg(depth24)).params
    # trainer=gpu's 8 loader workers per rank, each with two micro-batches (8 samples) of 256^2 fp32 images ready
    workers = 8 * (WORKER_GB * GB + PREFETCH * 8 * 4 * 3 * 256**2)
    assert ddp.ranks == fsdp.ranks == 8 and ddp.workers == fsdp.workers == pytest.approx(workers)
    assert ddp.other == pytest.approx(4 * GB + workers + 8 * p)  # every DDP rank builds the backbone and its EMA copy
    # FSDP: no whole copy on another rank; at each checkpoint Lightning copies the rank's shards of the weights, the
    # EMA and AdamW's two moments to the CPU: 16 bytes per parameter / 8 ranks
    assert fsdp.checkpoint == pytest.approx(16 * p / 8) and ddp.checkpoint == 0
    assert fsdp.other == pytest.approx(4 * GB + workers + 16 * p / 8)
    assert fsdp.rank0 == pytest.approx(4 * GB + workers + 8 * p)  # rank 0: the whole backbone, the best weights
    assert fsdp.total < 0.55 * ddp.total


def test_loader_workers_add_their_private_pages_and_their_ready_batches(monkeypatch):
    import multiprocessing

    import rfsweep.data.precomputed
    from rfsweep.run.builders import context_len, latent_shape
    from rfsweep.run.memory import GB, PREFETCH, WORKER_GB, host_plan, sample_bytes

    grid = ["+experiment=formulation_grid", "data=imagenet", "data.path=/tmp"]  # pre-encoded SD3 latents and text
    cfg = compose_cfg([*grid, "trainer.num_workers=0"])
    c, h, w = latent_shape(cfg)
    per_sample = 2 * (c * h * w + context_len(cfg) * 4096 + 2048)  # fp16 latents, SD3's context and pooled vector
    assert sample_bytes(cfg) == per_sample and context_len(cfg) * 4096 > 500_000  # ~1.3 MB a sample
    none, eight = host_plan(cfg), host_plan(compose_cfg([*grid, "trainer.num_workers=8"]))
    micro = memory_plan(cfg).micro_batch  # 1024 over 8 GPUs
    worker = WORKER_GB * GB + PREFETCH * micro * per_sample
    assert none.workers == 0 and eight.workers == pytest.approx(8 * worker)
    assert eight.rank0 - none.rank0 == pytest.approx(8 * worker)
    assert eight.other - none.other == pytest.approx(8 * worker)
    assert eight.total - none.total == pytest.approx(8 * 8 * worker)  # 64 workers on the node: 34 GB
    # fork shares the reader's tables with a rank's workers; forkserver or spawn unpickle a copy in each
    monkeypatch.setattr(rfsweep.data.precomputed, "table_bytes", lambda root, split: 10**9)
    fork = host_plan(compose_cfg([*grid, "trainer.num_workers=8"]))
    monkeypatch.setattr(multiprocessing, "get_start_method", lambda allow_none=False: "forkserver")
    server = host_plan(compose_cfg([*grid, "trainer.num_workers=8"]))
    assert fork.tables == server.tables == 10**9 and server.workers - fork.workers == pytest.approx(8 * 10**9)


def test_the_checkpoint_copy_counts_every_ema_and_adamws_moments_under_fsdp_on_gpus():
    from rfsweep.run.memory import host_plan

    fsdp = [*PAPER, "backbone.depth=24", "trainer.batch_size=64", "trainer.devices=8", "trainer.strategy=fsdp"]
    p = memory_plan(compose_cfg(fsdp)).params
    posthoc = host_plan(compose_cfg([*fsdp, "ema=posthoc"]))  # two post-hoc EMAs
    assert posthoc.checkpoint == pytest.approx((4 * p * 4 + 8 * p) / 8)  # weights, EMA, 2 post-hoc EMAs; 2 moments
    cpu = host_plan(compose_cfg([*fsdp, "trainer.accelerator=cpu", "trainer.precision=32-true"]))
    assert cpu.checkpoint == 0  # on CPUs the shards are on the host already: Lightning's copy is no copy
    assert "checkpoint copy 6.1" in posthoc.describe() and "8 loader workers" in posthoc.describe()


def test_a_job_that_cannot_fit_its_nodes_memory_is_refused_in_one_line():
    from rfsweep.run.memory import check_host_fits

    depth24 = [*PAPER, "backbone.depth=24", "trainer.batch_size=64", "trainer.devices=8"]
    with pytest.raises(ConfigError) as e:  # 8 DDP ranks of 2.0B parameters: about 160 GB of host memory
        check_host_fits(compose_cfg(depth24), 64)
    msg = str(e.value)
    assert "host memory plan" in msg and "hydra.launcher.mem_gb=64" in msg and "\n" not in msg
    fsdp = compose_cfg([*depth24, "trainer.strategy=fsdp"])  # 62.5 GB before the loader workers and checkpoint copy
    with pytest.raises(ConfigError, match=r"8 loader workers 1\.70, checkpoint copy 4\.1\), more than "):
        check_host_fits(fsdp, 64)  # 90 GB with them
    check_host_fits(fsdp, 96)  # sharded: fits


def test_a_sweep_whose_jobs_exceed_the_launchers_memory_stops_before_any_job(tmp_path):
    from tests.helpers import run_cli, tiny

    r = run_cli([*tiny(tmp_path), "-m", "seed=0,1", "hydra/launcher=slurm", "hydra.launcher.mem_gb=1"])
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert r.returncode == 2 and len(errors) == 1, r.stderr[-3000:]
    assert "host memory plan" in errors[0] and "hydra.launcher.mem_gb=1" in errors[0]
    assert "Submitting" not in r.stdout + r.stderr and not list(tmp_path.rglob("status.json"))
