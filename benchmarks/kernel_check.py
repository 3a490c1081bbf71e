"""Which kernel breaks a Flux.1 training step at 1024 px: each case in its own process (an illegal memory access ends
the CUDA context), synchronous launches, one JSON line per case with "ok" or the error's last line.

    python benchmarks/kernel_check.py [CASE ...] > kernels.jsonl

Cases: scaled_dot_product_attention forward + backward at Flux's 1024 px shape (24 heads, 4096 + 512 tokens, head 128)
with one backend at a time; torch.rms_norm (Flux's q/k norm) forward + backward; a Flux transformer with one double-
and one single-stream block at full width, forward + backward in bf16, with every attention backend allowed and
with each one left out. GPU only (the device tool).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

CASES = sys.argv[1:] or ["sdpa:cudnn", "sdpa:flash", "sdpa:efficient", "rms_norm", "flux:all", "flux:no-cudnn",
                         "flux:no-flash", "flux:no-efficient"]
BACKENDS = {"cudnn": "CUDNN_ATTENTION", "flash": "FLASH_ATTENTION", "efficient": "EFFICIENT_ATTENTION",
            "math": "MATH"}


def run_case(case: str) -> None:
    import torch
    from torch.nn.attention import SDPBackend, sdpa_kernel

    kind, _, option = case.partition(":")
    dtype, device = torch.bfloat16, os.environ.get("KERNEL_CHECK_DEVICE", "cuda")  # cpu: a smoke test of the code
    if kind == "sdpa":
        q, k, v = (torch.randn(1, 24, 4608, 128, device=device, dtype=dtype, requires_grad=True) for _ in range(3))
        with sdpa_kernel([getattr(SDPBackend, BACKENDS[option])]):
            torch.nn.functional.scaled_dot_product_attention(q, k, v).float().square().mean().backward()
    elif kind == "rms_norm":
        x = torch.randn(1, 4608, 24, 128, device=device, dtype=dtype, requires_grad=True)
        weight = torch.ones(128, device=device, dtype=dtype)
        torch.rms_norm(x, (128,), weight, 1e-6).float().square().mean().backward()
    else:
        from diffusers import FluxTransformer2DModel

        model = FluxTransformer2DModel(num_layers=1, num_single_layers=1, guidance_embeds=True).to(device, dtype)
        tokens, text = 4096, 512
        inputs = dict(hidden_states=torch.randn(1, tokens, 64, device=device, dtype=dtype),
                      encoder_hidden_states=torch.randn(1, text, 4096, device=device, dtype=dtype),
                      pooled_projections=torch.randn(1, 768, device=device, dtype=dtype),
                      timestep=torch.tensor([0.5], device=device), guidance=torch.tensor([3.5], device=device),
                      img_ids=torch.zeros(tokens, 3, device=device), txt_ids=torch.zeros(text, 3, device=device),
                      return_dict=False)
        allowed = [b for name, b in BACKENDS.items() if option != f"no-{name}"]
        with sdpa_kernel([getattr(SDPBackend, b) for b in allowed]):
            model(**inputs)[0].float().square().mean().backward()
    if device == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "--case":
        run_case(sys.argv[2])
        return
    env = {**os.environ, "CUDA_LAUNCH_BLOCKING": "1"}
    for case in CASES:
        started = time.time()
        done = subprocess.run([sys.executable, __file__, "--case", case], capture_output=True, text=True, env=env,
                              timeout=120)
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        error = next((line for line in reversed(lines) if "Error" in line), lines[-1] if lines else "")
        print(json.dumps({"case": case, "ok": done.returncode == 0, "seconds": round(time.time() - started, 1),
                          "error": None if done.returncode == 0 else error[-300:]}), flush=True)


if __name__ == "__main__":
    main()
