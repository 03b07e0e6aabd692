"""The LightningModule: one formulation trains one backbone on batches of (latents, context, pooled).

Randomness of a training step (timesteps, noise, conditioning dropout) comes from a generator seeded by
(seed, global step), so a run resumed from a checkpoint repeats an uninterrupted run exactly.
"""

from __future__ import annotations

import random
from typing import Callable

import lightning as L
import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict
from torch.distributed.fsdp import fully_shard

from rfsweep.formulations import VALIDATION_T
from rfsweep.sampling import sample
from rfsweep.train.ema import make_ema, update_ema
from rfsweep.train.posthoc_ema import beta, gamma_of
from rfsweep.types import Batch, Cond, RunMeta

VAL_NOISE_SEED = 20240305  # fixed across runs so validation losses of one run (and of a sweep) compare


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or Inf; the run stops and records the failure."""


class _Frozen:
    """Holds a module outside the LightningModule's state dict (frozen encoders are not checkpointed)."""

    def __init__(self, module: nn.Module):
        self.module = module


class DiffusionModule(L.LightningModule):
    def __init__(self, net: nn.Module, formulation, conditioner: nn.Module, autoencoder: nn.Module,
                 optimizer: Callable, warmup_steps: int, ema: dict, seed: int = 0, meta: RunMeta | None = None,
                 shard: bool = False):
        super().__init__()
        # shard (FSDP over several ranks): the EMA is made from the backbone's shards (configure_model); the backbone
        # itself is whole on rank 0 only, on the meta device elsewhere (rfsweep.run.builders.build_model)
        self.net, self.ema_net = net, make_ema(net, meta=shard)
        # EDM2's post-hoc EMA (rfsweep.train.posthoc_ema): power-function EMAs of the lengths `ema["sigma_rels"]`
        self.sigma_rels = [float(s) for s in ema.get("sigma_rels") or []]
        self.phema = nn.ModuleList([make_ema(net, meta=shard) for _ in self.sigma_rels])
        self.phema_gammas = [gamma_of(s) for s in self.sigma_rels]
        self.formulation = formulation
        self._cond, self._ae = _Frozen(conditioner), _Frozen(autoencoder)
        self.optimizer_factory, self.warmup_steps = optimizer, warmup_steps  # (params) -> torch optimizer
        self.ema_cfg, self.seed = dict(ema), seed
        self.meta = meta if meta is not None else RunMeta("", "", "", "", seed, (0, 0, 0))

    @property
    def conditioner(self) -> nn.Module:
        return self._cond.module

    @property
    def autoencoder(self) -> nn.Module:
        return self._ae.module

    def place_frozen(self) -> None:
        """Move the frozen encoders (kept out of the state dict, so out of `.to`) to the module's device."""
        self.conditioner.to(self.device)
        self.autoencoder.to(self.device)

    def on_fit_start(self) -> None:
        if self.meta.encodes_online:  # pre-encoded data: the encoders stay off the GPU while training
            self.place_frozen()

    def configure_model(self) -> None:
        """FSDP (trainer.strategy=fsdp, Lightning's ModelParallelStrategy): every block of the backbone, then the
        backbone, is sharded over the data-parallel ranks (FSDP2's `fully_shard`: weights, gradients and optimizer
        state); the EMA copy is sharded the same way, so its update stays shard-local. Rank 0 alone built the whole
        backbone: its weights (and buffers) reach every rank's shards by broadcast, the EMA's shards are copies of
        the backbone's, and every rank takes rank 0's random state. Under DDP: nothing to do."""
        mesh = getattr(self, "_device_mesh", None)
        if mesh is None or getattr(self, "_sharded", False):
            return
        dp, rank = mesh["data_parallel"], dist.get_rank()
        cuda = mesh.device_type == "cuda"
        device = torch.device("cuda", torch.cuda.current_device()) if cuda else torch.device("cpu")
        whole = {k: v for k, v in self.net.state_dict().items()} if rank == 0 else {}
        copies = (self.ema_net, *self.phema)  # the EMAs: sharded as the backbone, started from its weights
        for net in (self.net, *copies):
            for block in getattr(net, "blocks", []):
                fully_shard(block, mesh=dp)
            fully_shard(net, mesh=dp)
        for net in (self.net, *copies):
            if any(t.is_meta for t in (*net.parameters(), *net.buffers())):
                net.to_empty(device=device)
            else:
                net.to(device)
        set_model_state_dict(self.net, whole, options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True))
        del whole
        with torch.no_grad():
            for b in self.net.buffers():  # non-persistent buffers (e.g. position tables) are not in the state dict
                dist.broadcast(b, src=0)
            for copy in copies:
                for e, p in zip(copy.parameters(), self.net.parameters()):
                    e.copy_(p)
                for e, b in zip(copy.buffers(), self.net.buffers()):
                    e.copy_(b)
        state = [torch.get_rng_state(), np.random.get_state(), random.getstate()]
        dist.broadcast_object_list(state, src=0, device=device)
        torch.set_rng_state(state[0])
        np.random.set_state(state[1])
        random.setstate(state[2])
        self._sharded = True

    # -- data -------------------------------------------------------------------------------------
    def step_generator(self, step: int) -> torch.Generator:
        g = torch.Generator(device=self.device)
        g.manual_seed((self.seed * 1_000_003 + step) * 4)  # the seeds the measured demo runs used
        return g

    @torch.no_grad()
    def to_batch(self, batch: dict, keep: torch.Tensor | None = None) -> Batch:
        """Raw (images, captions) or pre-encoded (latents, parts) to Batch(latents, context, pooled);
        `keep` (B, n_encoders): which encoders' outputs survive caption dropping (None: all)."""
        if "latents" in batch:  # stored in fp16, computed with in the module's dtype
            latents = batch["latents"].to(self.device).float()
            parts = [(t.to(self.device).float(), p.to(self.device).float()) for t, p in batch["parts"]]
        else:
            latents = self.autoencoder.encode(batch["image"])
            parts = self.conditioner.encode(batch["caption"])
        cond = self.conditioner.assemble(parts, keep)
        return Batch(latents, cond.context.to(latents.dtype), cond.pooled.to(latents.dtype))

    # -- training ---------------------------------------------------------------------------------
    def _rank_world(self) -> tuple[int, int]:
        trainer = self._trainer
        return (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        # Every random draw of the step (caption drop, t, noise) is made for the whole global batch from the
        # step's generator, in that order, and this rank's micro-batch keeps its slice: a run's draws depend
        # neither on the number of devices nor on gradient accumulation (with one device, one micro-batch per
        # step, this is the plain draw). The micro-batch j of rank r holds global positions (r k + j) n ...
        rank, world = self._rank_world()
        k = self.trainer.accumulate_grad_batches if self._trainer is not None else 1
        g = self.step_generator(self.global_step)
        n = len(batch["caption"])
        total, first = n * world * k, (rank * k + batch_idx % k) * n
        mine = slice(first, first + n)
        keep = self.conditioner.drop_mask(total, g, self.device)[mine]
        b = self.to_batch(batch, keep)
        x0 = b.latents
        t = self.formulation.sample_t(total, generator=g, device=x0.device, dtype=x0.dtype)[mine]
        eps = torch.randn((total, *x0.shape[1:]), generator=g, device=x0.device, dtype=x0.dtype)[mine]
        loss = self.formulation.loss(self.net, x0, b.cond, t=t, eps=eps).mean()
        here = torch.isfinite(loss).item()
        everywhere = here if world == 1 else not self.trainer.strategy.reduce_boolean_decision(not here, all=False)
        if not everywhere:  # all ranks stop together, or the others would wait for the failed one forever
            where = f"{loss.item()}" if not here else "not finite on another rank"
            raise NonFiniteLossError(f"training loss is {where} at step {self.global_step}")
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=False, batch_size=x0.shape[0],
                 sync_dist=world > 1)  # the global batch's loss
        return loss

    def update_ema(self) -> None:
        # Sec. 5.1 / App. B.3: EMA updated every 100 batches with decay 0.99.
        if self.global_step % self.ema_cfg["every"] == 0:
            update_ema(self.ema_net, self.net, self.ema_cfg["decay"])
        for copy, gamma in zip(self.phema, self.phema_gammas):  # EDM2: every step t, beta_t = (1 - 1/t)^(gamma + 1)
            update_ema(copy, self.net, beta(self.global_step, gamma))

    def configure_optimizers(self):
        opt = self.optimizer_factory(self.net.parameters())
        warmup = max(int(self.warmup_steps), 0)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warmup) if warmup else 1.0)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    # -- validation: stratified over eight t with fixed noise (Sec. 5.1) ---------------------------
    @torch.no_grad()
    def validation_step(self, batch: dict, batch_idx: int) -> None:
        b = self.to_batch(batch)
        # the batch's place in the whole set (`rfsweep.data.datamodule.ValShard`) fixes its noise, on any rank
        g = torch.Generator(device="cpu").manual_seed(VAL_NOISE_SEED + int(batch.get("val_batch", batch_idx)))
        eps = torch.randn(b.latents.shape, generator=g).to(self.device, b.latents.dtype)
        # each mean below is logged with its samples as batch size (0 for a rank's padding batch): Lightning's epoch
        # mean over ranks sums the ranks' weighted sums and sample counts, so every rank logs the whole set's mean
        n = b.latents.shape[0]
        counted = n * int(batch.get("val_weight", 1))
        for name, net in (("raw", self.net), ("ema", self.ema_net)):
            losses = []
            for i, t in enumerate(VALIDATION_T):
                tt = torch.full((n,), float(t), device=self.device, dtype=b.latents.dtype)
                li = self.formulation.loss(net, b.latents, b.cond, t=tt, eps=eps).mean()
                self.log(f"val_t/{name}_t{i}", li, on_epoch=True, batch_size=counted, sync_dist=True)
                losses.append(li)
            self.log(f"val/loss_{name}", torch.stack(losses).mean(), on_epoch=True, prog_bar=name == "ema",
                     batch_size=counted, sync_dist=True)
            # the common validation loss: the rf-frame velocity error at the same eight t_rf, comparable across
            # formulations (their own losses are not; the race's and the pilot's early signal)
            common = torch.stack([self.formulation.rf_velocity_error(net, b.latents, b.cond, float(t), eps).mean()
                                  for t in VALIDATION_T]).mean()
            self.log(f"val/rf_velocity_{name}", common, on_epoch=True, batch_size=counted, sync_dist=True)

    # -- sampling ---------------------------------------------------------------------------------
    @torch.no_grad()
    def generate(self, captions: list[str], steps: int, guidance: float, shift: float = 1.0, seed=0,
                 weights: str | nn.Module = "ema", shape: tuple[int, int, int] | None = None) -> torch.Tensor:
        """Images (B, 3, H, W) in [-1, 1] for captions; noise fixed by `seed` (one int for the batch, or one seed per
        caption: each sample's noise then does not depend on the batch it is drawn in). `weights`: ema, raw, or a
        network of the backbone's class (e.g. a post-hoc EMA rebuilt at one length)."""
        net = weights if isinstance(weights, nn.Module) else self.ema_net if weights == "ema" else self.net
        net.eval()
        cond = self.conditioner(list(captions))
        cond = Cond(cond.context.to(self.device), cond.pooled.to(self.device))
        uncond = self.conditioner.unconditional(len(captions), self.device) if guidance != 1.0 else None
        shape = shape or self.meta.latent_shape
        if isinstance(seed, int):
            noise = torch.randn((len(captions), *shape), generator=torch.Generator(device="cpu").manual_seed(seed))
        else:
            noise = torch.stack([torch.randn(shape, generator=torch.Generator(device="cpu").manual_seed(int(s)))
                                 for s in seed])
        noise = noise.to(self.device)
        z = sample(self.formulation, net, noise, cond, uncond, steps=steps, guidance=guidance, shift=shift)
        return self.autoencoder.decode(z).clamp(-1, 1)

    # -- checkpoint extras: RNG state and run metadata -----------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        np_state = np.random.get_state()
        checkpoint["rng"] = {
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "python": list(random.getstate()[1]),
            "numpy": torch.from_numpy(np_state[1].astype(np.int64)),
            "numpy_pos": int(np_state[2]),
        }
        checkpoint["rfsweep"] = self.meta.to_dict()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        rng = checkpoint.get("rng")
        if rng:
            torch.set_rng_state(rng["torch"])
            if rng["cuda"] and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(rng["cuda"])
            random.setstate((3, tuple(rng["python"]), None))
            np.random.set_state(("MT19937", rng["numpy"].numpy().astype(np.uint32), rng["numpy_pos"], 0, 0.0))
