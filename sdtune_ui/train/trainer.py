"""The one training loop every method shares: setup() -> fit() -> (validate(), checkpoints) -> output.

Read it top to bottom. Methods (methods.py) decide what is trainable and what is saved; model families
(families/) decide how prompts are encoded and what the UNet predicts. The loop runs on
accelerate, so the same code serves one CPU, one GPU or `accelerate launch` on several.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from collections import deque
from collections.abc import Callable

import torch
import torch.nn.functional as F

from sdtune_ui.config import TrainConfig
from sdtune_ui.errors import Cancelled, DiskFull, Interrupted, SdtuneError, TrainingStopped, is_disk_full
from sdtune_ui.methods import ADAPTER, Method, make_method
from sdtune_ui.runs import EventLog, NullEventLog, RunDir
from sdtune_ui.train import checkpoint as ckpt
from sdtune_ui.train import compile_cache, graphed_step, sharding, speed
from sdtune_ui.train.batches import Batch, Batches
from sdtune_ui.train.caches import Caches
from sdtune_ui.train.conditioning import Conditioning, masked_mean
from sdtune_ui.train.data import TrainingData
from sdtune_ui.train.resume import Resumes
from sdtune_ui.train.setup import (
    build_optimizer,
    load_training_inputs,
    move_to_device,
    resolve_mixed_precision,
    weight_dtype_for,
)
from sdtune_ui.train.step_speed import StepSpeed


class Trainer(Batches, Caches, Conditioning, StepSpeed, Resumes):
    def __init__(self, config: TrainConfig, run: RunDir, *, events: EventLog | None = None,
                 cancel: Callable[[], bool] | None = None, pipeline: object | None = None):
        self.config = config
        self.pipeline = pipeline  # an already built pipeline (benchmarks); else config.model is loaded
        self.run = run
        self.events = events
        self.cancel = cancel or (lambda: False)
        self.step = 0
        self.probe = None  # the held-out loss set of eval_steps, built on first use
        self.graphed: graphed_step.GraphedStep | None = None   # the captured step, when cuda_graph applies
        self.compiled: compile_cache.CompileCache | None = None  # the compiled UNet's cache, when compiled
        self.compile_cache_loaded = False

    # ------------------------------------------------------------------ setup
    def setup(self) -> None:
        from accelerate import Accelerator
        from accelerate.utils import set_seed

        cfg = self.config
        build_optimizer(cfg, [], check_only=True)  # fail on a missing optimizer package before loading anything
        # Several processes without CUDA (CPU tests, CPU clusters): accelerate only forms the gloo process
        # group when told to use the CPU; otherwise every process would train alone.
        multi_process_cpu = not torch.cuda.is_available() and int(os.environ.get("WORLD_SIZE", "1")) > 1
        self.mixed_precision = resolve_mixed_precision(cfg.mixed_precision)  # "auto" -> bf16 / fp16 / no
        self.accelerator = Accelerator(mixed_precision=self.mixed_precision, cpu=multi_process_cpu,
                                       gradient_accumulation_steps=cfg.gradient_accumulation_steps,
                                       kwargs_handlers=[speed.ddp_settings(cfg)])
        acc = self.accelerator
        self.sharded = sharding.is_sharded(acc)  # FSDP: each process holds a slice of the UNet (sharding.py)
        if self.sharded:
            sharding.check_supported(cfg)
        if self.events is None:
            self.events = self.run.events() if acc.is_main_process else NullEventLog()
        if acc.num_processes > 1:
            self.log(f"{acc.num_processes} processes ({acc.distributed_type.value}) on {acc.device.type}: "
                     f"{cfg.train_batch_size} images per process, {cfg.train_batch_size * acc.num_processes} per step")
        set_seed(cfg.seed)
        self.weight_dtype = weight_dtype_for(self.mixed_precision)
        if cfg.mixed_precision == "auto" and acc.device.type == "cuda":
            self.log(f"Mixed precision: {self.mixed_precision} (auto)")

        # Data and models: images decoded and checked, base model loaded, class images generated if needed.
        started = time.perf_counter()
        inputs = load_training_inputs(cfg, acc, self.log, self._stop_if_cancelled, self.pipeline)
        self._phase("load", "Dataset and model loaded", started)
        self.parts, self.resolution = inputs.parts, inputs.resolution
        if acc.device.type == "cuda":   # decided before the caches: their encoders' attention builds kernels too
            images = speed.images_per_process(cfg, len(inputs.examples), acc.num_processes)
            cudnn, why = speed.cudnn_attention_plan(cfg, self.parts.family, images)
            torch.backends.cuda.enable_cudnn_sdp(cudnn)   # for this run; train() puts it back
            self.log(f"Attention: {'cuDNN' if cudnn else 'flash / memory-efficient (cuDNN left out)'}: {why}")
        self.data = TrainingData(inputs.examples, inputs.class_examples, resolution=self.resolution,
                                 bucketing=cfg.bucketing, center_crop=cfg.center_crop or cfg.cache_latents,
                                 random_flip=cfg.random_flip, seed=cfg.seed, sampling=inputs.sampling,
                                 tokens=inputs.tokens, class_of=inputs.class_of)

        # Method: freeze, add adapters / tokens. Frozen weights go to half precision, trainable stay fp32.
        self.method: Method = make_method(cfg)
        parts = self.parts
        set_seed(cfg.seed)  # adapter / token initialisation depends on the seed only, not on what loaded before
        keep_fp32 = {id(m) for m in self.method.full_precision_models(parts)}

        def to_device(module: torch.nn.Module) -> None:
            move_to_device(module, acc.device, torch.float32 if id(module) in keep_fp32 else self.weight_dtype)

        for module in (parts.vae, *([] if self.encoders_take_turns else parts.text_encoders)):
            to_device(module)   # encoders that take turns come to the GPU as they encode (caches.py)
        if parts.vae.config.get("force_upcast"):
            parts.vae.to(dtype=torch.float32)  # SDXL's VAE overflows in fp16
        self.method.prepare(parts)
        if cfg.init_from:  # an earlier run's weights / embeddings, before any cache or optimizer sees them
            from sdtune_ui.train.init_from import start_from

            start_from(cfg, self.method, parts, self.log, self.emit)

        # Caches: the VAE is always frozen; the text encoders are frozen unless the method trains them. They
        # are built before the UNet comes to the GPU: encoding 1024px images is the setup's memory peak.
        started = time.perf_counter()
        self.latent_cache = self._encode_all_latents() if cfg.cache_latents else None
        self.text_cache = (self._encode_all_prompts() if cfg.cache_text_embeddings
                           and not self.method.trains_text_encoders() else None)
        # Cached encoders are only needed again for sample images: park them in CPU memory meanwhile.
        self._prepare_conditioning()
        self.parked = self._park_cached_encoders() if cfg.offload_frozen_encoders else []
        self._phase("caches", "Latents and prompts cached", started)

        started = time.perf_counter()
        to_device(parts.unet)  # its adapters move with it; trainable ones go back to fp32 next
        if parts.controlnet is not None:
            parts.controlnet.to(acc.device)   # trained: stays float32
        if cfg.channels_last:
            parts.unet.to(memory_format=torch.channels_last)
        if cfg.has(ADAPTER):
            from diffusers.training_utils import cast_training_params

            cast_training_params(self.method.trained_models(parts), dtype=torch.float32)
            if self.weight_dtype != torch.float32:
                speed.skip_adapter_input_casts(self.method.trained_models(parts))
        if cfg.gradient_checkpointing:
            parts.unet.enable_gradient_checkpointing()
            for encoder in parts.text_encoders if self.method.trains_text_encoders() else []:
                encoder.gradient_checkpointing_enable()

        self._stop_if_cancelled()

        # Optimizer and schedule.
        self.global_batch = cfg.train_batch_size * acc.num_processes
        self.batches_per_epoch = len(self.data.epoch_batches(0, self.global_batch))
        self.total_steps = cfg.max_train_steps or cfg.num_train_epochs * math.ceil(
            self.batches_per_epoch / cfg.gradient_accumulation_steps)
        self.graph_plan = graphed_step.capture_plan(cfg, device_type=acc.device.type, processes=acc.num_processes,
                                                    sharded=self.sharded, mixed_precision=self.mixed_precision,
                                                    family=parts.family)
        self._compile_if_it_pays()
        groups = self.method.param_groups(parts)
        if cfg.scale_lr:
            factor = cfg.train_batch_size * cfg.gradient_accumulation_steps * acc.num_processes
            for group in groups:
                group["lr"] *= factor
        self.optimizer = build_optimizer(cfg, groups, device=acc.device)
        if cfg.optimizer != "adamw":
            self.log(f"Optimizer: {cfg.optimizer}")
        from diffusers.optimization import get_scheduler

        self.lr_scheduler = get_scheduler(cfg.lr_scheduler, optimizer=self.optimizer,
                                          num_warmup_steps=cfg.lr_warmup_steps,
                                          num_training_steps=self.total_steps,
                                          num_cycles=cfg.lr_num_cycles, power=cfg.lr_power)
        self.ema = None
        if cfg.use_ema:
            from diffusers.training_utils import EMAModel

            # One fixed list, built after the trainable weights became fp32 (so are their averages): EMAModel
            # pairs averages and weights by position in step, copy_to and resume.
            self.ema_params = self.method.ema_parameters(parts)
            self.ema = EMAModel(self.ema_params, decay=cfg.ema_decay)
        # The schedule is stepped by us once per optimizer step, so it is not handed to accelerate.
        trained = self.method.trained_models(parts)
        prepared = acc.prepare(*trained, self.optimizer)
        self.wrapped_models, self.optimizer = list(prepared[:-1]), prepared[-1]
        # The forward pass must go through the wrappers: DDP all-reduces gradients only for calls it sees.
        wrapped = {id(model): wrapper for model, wrapper in zip(trained, self.wrapped_models)}
        self.unet = wrapped.get(id(parts.unet), parts.unet)
        self.controlnet = wrapped.get(id(parts.controlnet), parts.controlnet)
        self.text_encoders = [wrapped.get(id(encoder), encoder) for encoder in parts.text_encoders]
        # Under FSDP the parameters were replaced; accelerate clips them only as the sharded model's own list.
        self.trainable_params = (list(self.unet.parameters()) if self.sharded
                                 else [p for g in groups for p in g["params"]])

        # Random numbers: data decisions on the CPU, noise and timesteps on the device; both checkpointed.
        self.data_generator = torch.Generator().manual_seed(cfg.seed)
        self.noise_generator = torch.Generator(device=acc.device).manual_seed(cfg.seed + 1)
        self._resume_if_possible()
        self._graph_if_safe()
        self._phase("prepare", "UNet, optimizer and step prepared", started)

    # ------------------------------------------------------------------ one step
    def compute_loss(self, batch: Batch) -> torch.Tensor:
        """The family's objective: noise the latents, predict, compare with the family's target (noise, velocity
        or flow), weighted per image as the family says (min-SNR, flow-matching weightings)."""
        cfg, parts, family = self.config, self.parts, self.parts.family
        scheduler = parts.noise_scheduler
        latents = batch.latents.float()
        noisy = family.noisy_latents(scheduler, latents, batch.noise, batch.timesteps)
        hidden, pooled = batch.hidden, batch.pooled
        if hidden is None:
            hidden, pooled = family.encode(self.text_encoders, batch.input_ids)
        unet_dtype = self.weight_dtype if self.accelerator.mixed_precision != "no" else torch.float32
        sample = family.unet_sample(noisy, batch.inpaint_mask, batch.masked_latents)
        residuals = self._controlnet_residuals(noisy, batch, hidden, family.added_cond_kwargs(pooled, batch.time_ids),
                                               unet_dtype)
        prediction = family.predict(self.unet, sample.to(unet_dtype), batch.timesteps, hidden.to(unet_dtype), pooled,
                                    batch.time_ids, **residuals)
        target = family.target(scheduler, latents, batch.noise, batch.timesteps)
        errors = F.mse_loss(prediction.float(), target.float(), reduction="none")
        per_sample = masked_mean(errors, batch.loss_mask, cfg.unmasked_weight)
        weights = family.loss_weights(scheduler, batch.timesteps, cfg)
        if weights is not None:
            per_sample = per_sample * weights
        if batch.num_class:
            instance, prior = per_sample[:-batch.num_class], per_sample[-batch.num_class:]
            return instance.mean() + cfg.prior_loss_weight * prior.mean()
        return per_sample.mean()

    def train_step(self, batch: Batch) -> torch.Tensor:
        """One optimizer step on one batch: forward, backward, clipping, update; returns the detached loss.

        What the CUDA graph captures (graphed_step.py), so nothing here may read a value back to the host.
        It is the eager loop's step for one process without gradient accumulation or a loss scaler (accelerate's
        backward and clipping reduce to these calls there); gradients are left for the caller to clear.
        """
        loss = self.compute_loss(batch)
        loss.backward()
        if self.config.max_grad_norm:
            torch.nn.utils.clip_grad_norm_(self.trainable_params, self.config.max_grad_norm)
        self._inner_optimizer.step()
        return loss.detach()

    # ------------------------------------------------------------------ the loop
    def fit(self) -> None:
        cfg, acc = self.config, self.accelerator
        for model in self.wrapped_models:
            model.train()
        pending: list[tuple[int, torch.Tensor, float]] = []   # (step, loss on device, lr): read back in bulk
        recent_batches: deque = deque(maxlen=cfg.log_every * cfg.gradient_accumulation_steps * 2)
        started, started_step = time.perf_counter(), self.step
        # The steady rate (and the ETA) count from the end of the warm-up: the eager steps before the capture and
        # the capture itself, or the first steps of a compiled UNet.
        self._clock = (started, started_step, False)
        warm_until = started_step + graphed_step.WARMUP_STEPS + (1 if self.graphed is not None else 0)
        self.emit("status", status="running", step=self.step, total=self.total_steps)
        while self.step < self.total_steps:
            # 1. Forward and backward over gradient_accumulation_steps micro-batches.
            step_loss = None
            if self.graphed is not None:   # one process, no accumulation: the whole step in one call
                batch = self._batch(self.step)
                recent_batches.append((self.step + 1, batch.names))
                step_loss = self.graphed(batch)
            for k in range(cfg.gradient_accumulation_steps if self.graphed is None else 0):
                micro = self.step * cfg.gradient_accumulation_steps + k
                batch = self._batch(micro)
                recent_batches.append((self.step + 1, batch.names))
                with acc.accumulate(*self.wrapped_models):
                    loss = self.compute_loss(batch)
                    acc.backward(loss)
                    # 2. Clip and update once the accumulation window closes.
                    if acc.sync_gradients and cfg.max_grad_norm:
                        acc.clip_grad_norm_(self.trainable_params, cfg.max_grad_norm)
                    self.optimizer.step()
                    self.optimizer.zero_grad(set_to_none=True)
                detached = loss.detach()
                step_loss = detached if step_loss is None else step_loss + detached
            self.step += 1
            lr = self.lr_scheduler.get_last_lr()[0]
            self.lr_scheduler.step()
            # 3. Method bookkeeping (TI restores untouched rows) and EMA.
            self.method.after_optimizer_step(self.parts)
            if self.ema is not None:
                self.ema.step(self.ema_params)
            pending.append((self.step, step_loss / cfg.gradient_accumulation_steps, lr))
            if self.step == warm_until:
                self._end_warmup(started)

            # 4. Read losses back only every log_every steps: a host sync per step would stall the GPU.
            at_end = self.step == self.total_steps
            checkpoint_due = cfg.checkpointing_steps and self.step % cfg.checkpointing_steps == 0
            validation_due = cfg.validation_prompts and cfg.validation_steps and self.step % cfg.validation_steps == 0
            cancel = self._cancel_requested()
            if len(pending) >= cfg.log_every or at_end or checkpoint_due or validation_due or cancel:
                self._flush(pending, recent_batches, started, started_step)
                pending = []
            if cancel:
                self.save_checkpoint()
                raise self._stop_reason()
            if checkpoint_due and not at_end:
                self.save_checkpoint()
            if validation_due and not at_end:
                self.validate()
            if cfg.eval_steps and (self.step % cfg.eval_steps == 0 or at_end):
                self.heldout_loss()
        self._record_speed()

    def _asked_to_cancel(self) -> bool:
        """The caller's cancel flag or the run folder's CANCEL file (written by the app or a terminal)."""
        return bool(self.cancel()) or self.run.cancel_requested()

    def _stop_if_cancelled(self) -> None:
        """Cancel during setup (model load, caching, class images) takes effect at once, not at step 1."""
        if self._asked_to_cancel():
            raise self._stop_reason()

    def _stop_reason(self) -> Cancelled:
        """Interrupted when a shutdown signal asked (the run can be resumed as it is), else Cancelled."""
        return Interrupted() if self.run.interrupt_requested() else Cancelled()

    def _cancel_requested(self) -> bool:
        requested = self._asked_to_cancel()
        if self.accelerator.num_processes == 1:
            return requested
        # Every process must stop at the same step, or the others would wait forever in all-reduce. Agreeing
        # costs a collective and a host sync, so several processes agree only every log_every steps.
        if self.step % self.config.log_every:
            return False
        flag = torch.tensor([1.0 if requested else 0.0], device=self.accelerator.device)
        return bool(self.accelerator.reduce(flag, reduction="sum").item() > 0)

    def _flush(self, pending, recent_batches, started: float, started_step: int) -> None:
        acc = self.accelerator
        losses = torch.stack([loss for _, loss, _ in pending])
        if acc.num_processes > 1:
            losses = acc.reduce(losses, reduction="mean")
        values = losses.float().cpu().tolist()
        clock_time, clock_step, steady = self._clock
        steady = steady and self.step > clock_step
        if steady:  # the warm-up is over: the steady rate
            rate = self.steady_rate = (self.step - clock_step) / (time.perf_counter() - clock_time)
        else:
            elapsed = time.perf_counter() - started
            rate = (self.step - started_step) / elapsed if elapsed > 0 else 0.0
        memory = torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None
        for (step, _, lr), value in zip(pending, values):
            if not math.isfinite(value):
                names = sorted({n for s, batch in recent_batches if s == step for n in batch})
                raise TrainingStopped(
                    f"The loss became {value} at step {step} (batch: {', '.join(names)}). "
                    f"{ckpt.last_good_text(self.run)}Try a lower learning rate, bf16 instead of fp16, or check those "
                    "images.")
            eta = round((self.total_steps - step) / rate, 1) if rate and steady else None
            self.emit("step", step=step, total=self.total_steps, loss=value, lr=lr, it_s=round(rate, 3), eta_s=eta,
                      steady=steady, gpu_mem_gib=round(memory, 3) if memory is not None else None)

    # ------------------------------------------------------------------ validation, checkpoints, output
    @torch.no_grad()
    def validate(self) -> None:
        from sdtune_ui.train.sampling import sample_images

        main = self.accelerator.is_main_process
        # Under FSDP every forward gathers weights from all processes, so all of them sample (main one saves).
        if not self.config.validation_prompts or not (main or self.sharded):
            return
        for model in self.wrapped_models:
            model.eval()
        for module in self.parked:
            module.to(self.accelerator.device)
        pipe, extra = self._sampling_pipeline()
        with speed.eager():  # sampling's shapes differ from training's: no recompiling for a few images
            samples = sample_images(pipe, self.config, self.method, self.step, self.run.samples_dir,
                                    self.accelerator, self.weight_dtype, save=main,
                                    size=self.parts.family.sample_size_kwargs(self.resolution),
                                    encoded=self.cached_prompt_kwargs if self.text_encoders_freed else None,
                                    extra=extra)
        for path, prompt in samples:
            self.emit("sample", step=self.step, path=str(path.relative_to(self.run.path)), prompt=prompt)
        for module in self.parked:
            module.to("cpu")
        for model in self.wrapped_models:
            model.train()

    @torch.no_grad()
    def heldout_loss(self) -> None:
        """`eval_steps`: the loss on fixed noise for the training (and class) images, as a `metric` event."""
        from sdtune_ui.evaluate.heldout import TrainingProbe

        if not self.accelerator.is_main_process or self.sharded:
            return
        if self.parts.family.inpainting or self.parts.controlnet is not None:
            if self.probe is None:
                self.log("The held-out loss (eval_steps) is not measured for inpainting and ControlNet runs yet")
                self.probe = False
            return
        self.probe = self.probe or TrainingProbe(self)
        self.emit("metric", step=self.step, source="training", metrics=self.probe(self))

    def check_weights(self, before: str) -> None:
        """Stop the run when a trainable weight is not finite or absurdly large: an update went bad, and such
        weights must never be saved as a checkpoint or an output (checkpoint.py: largest_weight)."""
        largest = ckpt.largest_weight(self.trainable_params, self.accelerator)
        if not ckpt.is_sane(largest):
            raise TrainingStopped(
                f"The trained weights went bad by step {self.step} (largest value {largest:.3g}) and {before} was "
                f"not saved. {ckpt.last_good_text(self.run)}Try a lower learning rate, bf16 instead of fp16, or "
                "gradient clipping (max_grad_norm).")

    def save_checkpoint(self) -> None:
        acc = self.accelerator
        self.check_weights(f"checkpoint step-{self.step}")
        acc.wait_for_everyone()
        if self.sharded:  # collectives: every process sends its slices, the main one receives whole tensors
            trainable = self._gather_unet_state()
            optimizer_state = sharding.gather_optimizer_state(self.unet, self.optimizer)
        if acc.is_main_process:
            if not self.sharded:
                trainable = self.method.trainable_state(self.parts)
                optimizer_state = self.optimizer.state_dict()
            folder = self.run.checkpoints_dir / f"step-{self.step}"
            rng = {"data": self.data_generator.get_state(), "noise": self.noise_generator.get_state(),
                   "torch": torch.get_rng_state()}
            ckpt.save_checkpoint(folder, step=self.step, trainable=trainable,
                                 optimizer_state=optimizer_state, lr_scheduler=self.lr_scheduler, rng=rng,
                                 config=self.config.to_dict(),
                                 ema_state=self.ema.state_dict() if self.ema is not None else None)
            ckpt.prune_checkpoints(self.run.checkpoints(), self.config.checkpoints_total_limit)
            self.emit("checkpoint", step=self.step, path=str(folder.relative_to(self.run.path)))
        acc.wait_for_everyone()

    def _gather_unet_state(self) -> dict[str, torch.Tensor]:
        trainable = set(sharding.trainable_names(self.unet))
        return {f"unet.{name}": tensor for name, tensor in sharding.gather_model_state(self.unet).items()
                if name in trainable}

    def save_output(self) -> list[str]:
        acc = self.accelerator
        self.check_weights("the final output")
        acc.wait_for_everyone()
        started = time.perf_counter()
        files: list[str] = []
        unet_state = sharding.gather_model_state(self.unet) if self.sharded else None  # a collective
        if acc.is_main_process:
            parts = self.parts
            if self.ema is not None:
                self.ema.copy_to(self.ema_params)   # the averaged weights are the result
            if unet_state is not None:  # a plain module with the whole weights, for the usual savers
                parts = dataclasses.replace(parts, unet=sharding.whole_copy(parts.unet, unet_state))
            try:
                written = self.method.save_output(parts, self.run.output_dir)
                if self.config.tool_files:
                    written += self._write_tool_files(parts)
            except Exception as err:
                if is_disk_full(err):
                    raise DiskFull(self.run.output_dir, "saving the final output") from None
                raise
            files = [str(p.relative_to(self.run.path)) for p in written]
            self._phase("save", "Output saved", started)
            self.emit("output", files=files)
        acc.wait_for_everyone()
        return files

    def _write_tool_files(self, parts) -> list:
        """The kohya/A1111 copies and README.txt beside the output; a failure there must not fail the run."""
        from sdtune_ui.export.formats import write_tool_files

        try:
            return write_tool_files(self.run.path, self.config.to_dict(), family=parts.family,
                                    unet_config=dict(parts.unet.config))
        except (SdtuneError, ValueError, OSError) as err:
            self.log(f"The output is saved, but not the copies for other tools ({err}); `python -m sdtune_ui "
                     "export` can write them later.", level="warning")
            return []

    # ------------------------------------------------------------------ events
    def emit(self, kind: str, **fields) -> None:
        self.events.emit(kind, **fields)

    def log(self, message: str, level: str = "info") -> None:
        if self.events is not None:
            self.emit("log", level=level, message=message)

