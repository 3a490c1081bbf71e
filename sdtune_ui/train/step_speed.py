"""How the trainer's step runs and how fast it went: captured as a CUDA graph or not, the UNet compiled or not
(compile caches, this machine's measurements), the warm-up and the steady rate. A mixin of Trainer, kept apart
so the loop (trainer.py) stays readable; it reads the trainer's settings, parts and clock."""

from __future__ import annotations

import time

import torch

from sdtune_ui.train import compile_cache, graphed_step, speed


class StepSpeed:
    def _phase(self, name: str, text: str, started: float) -> None:
        """Log how long a phase of the set-up took (the run's overhead, visible to the user and benchmarks), and on a
        GPU the allocated peak so far: which phase set the run's peak (loading, the caches' encoders, the steps)."""
        seconds = time.perf_counter() - started
        peak = {"peak_gib": round(torch.cuda.max_memory_allocated() / 2**30, 3)} if torch.cuda.is_available() else {}
        self.emit("log", level="info", message=f"{text} in {seconds:.1f} s", phase=name, seconds=round(seconds, 3),
                  **peak)

    def _graph_if_safe(self) -> None:
        capture, reason = self.graph_plan
        acc = self.accelerator
        if not capture:
            if self.config.cuda_graph != "off" and acc.device.type == "cuda":
                self.log(f"The training step runs eagerly: {reason}")
            return
        self.graphed = graphed_step.GraphedStep(self.train_step, self._inner_optimizer, self.trainable_params,
                                                log=self.log, device=acc.device)
        self.log(f"The training step will be captured as a CUDA graph after {self.graphed.warmup_steps} "
                 f"warm-up steps ({reason})")

    @property
    def _inner_optimizer(self) -> torch.optim.Optimizer:
        return getattr(self.optimizer, "optimizer", self.optimizer)  # accelerate's wrapper holds the real one

    def _compile_if_it_pays(self) -> None:
        cfg, acc = self.config, self.accelerator
        graphed = self.graph_plan[0]
        width, height = self.data.items[0].bucket
        latent_shape = (cfg.train_batch_size, self.parts.vae.config.latent_channels, height // self._vae_scale,
                        width // self._vae_scale)
        settings = {name: getattr(cfg, name, None) for name in (
            "adapter", "rank", "lora_alpha", "lora_dropout", "lora_targets", "lokr_factor", "decompose_both",
            "train_text_encoder", "gradient_checkpointing", "channels_last", "num_vectors")}
        settings["cudnn_attention"] = torch.backends.cuda.cudnn_sdp_enabled()   # 7% apart: measured apart
        self.speed_key = compile_cache.run_shape_key(self.parts.unet, method=cfg.method, adapter=settings,
                                                     batch_shape=latent_shape, dtype=self.weight_dtype,
                                                     device=acc.device)
        scope = speed.compile_scope(cfg, self.parts.family)
        intended = cfg.compile_unet if cfg.compile_unet not in ("auto", "none") else "reduce-overhead"
        if intended == "reduce-overhead" and graphed:
            intended = "default"  # the captured step already replays everything as one CUDA graph
        cache = compile_cache.CompileCache(self.speed_key, intended, scope)
        mode, reason = speed.compile_plan(cfg, family=self.parts.family, device_type=acc.device.type,
                                          total_steps=self.total_steps, sharded=self.sharded,
                                          bucket_count=len({item.bucket for item in self.data.items}),
                                          processes=acc.num_processes, graphed=graphed,
                                          measured=compile_cache.measured(self.speed_key),
                                          cache_exists=cache.exists())
        if mode == "reduce-overhead" and graphed:
            mode = "default"
        self.compile_mode = mode
        if mode != "none":
            if mode == intended:
                self.compiled = cache
                self.compile_cache_loaded = cache.load()
            mode = speed.compile_unet(self.parts.unet, mode, scope, cfg.gradient_checkpointing)
            cached = " from the compile cache" if self.compile_cache_loaded else ""
            self.log(f"Compiling the UNet{cached} ({mode}, {scope}; {reason}): the first steps are slower")
        elif cfg.compile_unet != "none" and (cfg.compile_unet != "auto" or acc.device.type == "cuda"):
            self.log(f"The UNet runs eagerly: {reason}")

    def _end_warmup(self, started: float) -> None:
        """Start the steady-rate clock (once the GPU has finished the warm-up's work)."""
        if torch.cuda.is_available() and self.accelerator.device.type == "cuda":
            torch.cuda.synchronize(self.accelerator.device)
        now = time.perf_counter()
        self._clock = (now, self.step, True)
        if self.compiled is not None and self.accelerator.is_main_process:
            kind = "compile_warm_s" if self.compile_cache_loaded else "compile_cold_s"
            compile_cache.record(self.speed_key, **{kind: now - started})
            saved = self.compiled.save()
            self.log(f"Compiled in {now - started:.0f} s; the compile cache ({saved / 2**20:.0f} MiB) is saved "
                     f"for the next run")
        what = " (CUDA graph capture included)" if self.graphed is not None and self.graphed.warmed_up else ""
        self.emit("log", level="info", message=f"Warm-up took {now - started:.1f} s for the first {self.step} "
                  f"steps{what}; rates and the ETA count from here", phase="warmup", seconds=round(now - started, 3))

    def _record_speed(self) -> None:
        """Remember this machine's steady step time for this way of running (compile_unet=auto decides from it),
        and save what was compiled after the warm-up too."""
        if self.compiled is not None and self.accelerator.is_main_process:
            self.compiled.save()
        rate, (_, clock_step, steady) = getattr(self, "steady_rate", None), self._clock
        if not rate or not steady or self.step - clock_step < 20 or self.accelerator.num_processes > 1:
            return
        graphed = self.graphed is not None and bool(self.graphed.captured) and not self.graphed.failure
        way = "+".join((["compiled"] if self.compile_mode != "none" else []) + (["graph"] if graphed else []))
        compile_cache.record(self.speed_key, **{f"{way or 'eager'}_step_s": 1 / rate})
