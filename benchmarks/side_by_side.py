"""A user's whole run, ours against diffusers' example scripts, side by side in one call on one GPU.

    python benchmarks/side_by_side.py --peer-scripts DIR --work /tmp/sbs --out results.jsonl \\
        sd15:lora:400 sd15:lora:400:again sd15:ti:400 sd15:dreambooth:400 sdxl:lora:400 sd15:lora:1000
    python benchmarks/side_by_side.py --peer-scripts DIR ... sd35m:lora:100 flux:lora:100 flux:lora:100:small
    python benchmarks/side_by_side.py --peer-scripts DIR ... sd15:controlnet:100 sd15-inpaint:lora:200:ours

Each row is MODEL:METHOD:STEPS (":again" = only our second run of a row measured before: warm caches; ":ckpt" = both
trainers with gradient checkpointing (Flux at 1024 px crashes without it on torch 2.11, kernel_check.py); ":small" =
only ours, with the memory savers of the smallest configuration: gradient checkpointing, Adafactor, and an NF4 base
where bitsandbytes is installed; ":ours" = our run only, no peer). Models: sd15, sdxl, sd35m (SD3.5 Medium), flux
(Flux.1-dev), all at batch 1; sd15-inpaint is SD1.5 with a 9-channel UNet (the inpainting LoRA's base). Method
`controlnet` trains a new ControlNet from the UNet on 5 pictures with their condition pictures (an imagefolder with
`conditioning_image_file_name`, which diffusers' train_controlnet.py and our reader both take).
The same random full-size weights (full_size.py, saved once as a diffusers folder), the same 5 random images,
batch 1, bf16, no validation, no intermediate checkpoints. Each first run gets an empty CUDA kernel cache of its own
(CUDA_CACHE_PATH): the driver keeps kernels compiled at run time (cuDNN attention's, ~7 s for SD1.5's shapes on
an H200) across processes, so whichever trainer ran first would otherwise pay them for both; a second run of ours
reuses its first run's cache, as a user's second run would. The peer runs under `accelerate launch`, ours is
`python -m sdtune_ui train`. For each it records the wall time from process start to the saved output (the
newest file of the output), the process's whole time, the steady it/s (ours from events.jsonl, the peer's from
its progress bar), the peak GPU memory of the whole GPU (nvidia-smi every 100 ms) and the command. One JSON line
per row: {"vs": "diffusers", "model", "method", "steps", "e2e_ratio", "ours": {...}, "peer": {...}}.

GPU only (the device tool); the peer's scripts are passed as a folder and never copied into the project.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RESOLUTION = {"sd15": 512, "sdxl": 1024, "sd35m": 1024, "flux": 1024, "sd15-inpaint": 512}
PEER_LORA_SCRIPTS = {"sd15": "train_dreambooth_lora.py", "sdxl": "train_dreambooth_lora_sdxl.py",
                     "sd35m": "train_dreambooth_lora_sd3.py", "flux": "train_dreambooth_lora_flux.py",
                     # the research project's inpainting LoRA: it fails at start-up on diffusers 0.42.1 (README)
                     "sd15-inpaint": "train_dreambooth_inpaint_lora.py"}
PROMPT = "a photo of sks dog"
# Rough process times on an H200 (s): fixed + per step for the peer, then ours (measured, a little padded), to skip
# a row that cannot finish before the deadline.
ESTIMATE = {("sd15", "lora"): (20, 0.23, 28, 0.035), ("sd15", "ti"): (25, 0.13, 22, 0.03),
            ("sd15", "dreambooth"): (40, 0.22, 35, 0.08), ("sdxl", "lora"): (83, 0.56, 45, 0.15),
            # not measured yet: guesses from the sizes (loading ~34 GB of bf16 weights for Flux)
            ("sd35m", "lora"): (70, 0.35, 50, 0.3), ("flux", "lora"): (120, 0.9, 90, 0.7),
            ("sd15-inpaint", "lora"): (32, 0.24, 25, 0.05), ("sd15", "controlnet"): (35, 0.35, 28, 0.1)}


# ---------------------------------------------------------------------------------------------- set-up
def save_weights(model: str, folder: Path) -> None:
    """Random full-size weights saved as a diffusers folder (run in its own process: no CUDA context left)."""
    import torch

    sys.path.insert(0, str(REPO / "benchmarks"))
    sys.path.insert(0, str(REPO))
    from full_size import build

    torch.manual_seed(0)
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        pipe = build(model)
    if model in ("sd35m", "flux"):   # saved in bf16 as released (Flux in fp32 would be 48 GB on disk)
        pipe.to(torch.bfloat16)
    pipe.to("cpu").save_pretrained(folder, safe_serialization=True)


def ensure_weights(model: str, work: Path) -> Path:
    folder = work / f"weights-{model}"
    if model == "sd15-inpaint" and not (folder / "model_index.json").exists():
        started = time.time()
        subprocess.run([sys.executable, __file__, "--save-inpaint-weights", str(ensure_weights("sd15", work)),
                        str(folder)], check=True)
        print(f"== saved {model} weights in {time.time() - started:.0f} s", file=sys.stderr, flush=True)
    if not (folder / "model_index.json").exists():
        started = time.time()
        subprocess.run([sys.executable, __file__, "--save-weights", model, str(folder)], check=True)
        print(f"== saved {model} weights in {time.time() - started:.0f} s", file=sys.stderr, flush=True)
    return folder


def save_inpaint_weights(base: Path, folder: Path) -> None:
    """SD1.5's random weights with a 9-channel UNet (random too): the other components are links to the base's."""
    import torch
    from diffusers import UNet2DConditionModel

    folder.mkdir(parents=True)
    for part in ("vae", "text_encoder", "tokenizer", "scheduler"):
        (folder / part).symlink_to(base / part)
    index = json.loads((base / "model_index.json").read_text())
    index["_class_name"] = "StableDiffusionInpaintPipeline"
    config = UNet2DConditionModel.load_config(base / "unet")
    torch.manual_seed(0)
    # Initialised on the GPU: 860M random weights on the CPU took 43 s of a 150 s device call (issue 14's call).
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        unet = UNet2DConditionModel.from_config({**config, "in_channels": 9})
    unet.to("cpu").save_pretrained(folder / "unet")
    (folder / "model_index.json").write_text(json.dumps(index, indent=2))


def ensure_pairs(model: str, work: Path, count: int = 5) -> Path:
    """Pictures with their condition pictures (edges of the picture), as an imagefolder both trainers read."""
    import numpy as np
    from PIL import Image, ImageFilter

    folder = work / f"pairs-{RESOLUTION[model]}"
    if not folder.exists():
        folder.mkdir(parents=True)
        rows = []
        for index, source in enumerate(sorted(ensure_images(model, work, count).glob("*.png"))):
            picture = Image.open(source).filter(ImageFilter.GaussianBlur(4))
            picture.save(folder / f"{index}.png")
            edges = picture.convert("L").filter(ImageFilter.FIND_EDGES).point(lambda v: 255 if v > 8 else 0)
            Image.fromarray(np.repeat(np.asarray(edges)[..., None], 3, axis=2)).save(folder / f"{index}-condlabel.png")
            rows.append({"file_name": f"{index}.png", "conditioning_image_file_name": f"{index}-condlabel.png",
                         "text": PROMPT})
        (folder / "metadata.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    return folder


def ensure_images(model: str, work: Path, count: int = 5) -> Path:
    """Images only: the peer's DreamBooth scripts open every file of the folder as an image."""
    import numpy as np
    from PIL import Image

    folder = work / f"images-{RESOLUTION[model]}"
    if not folder.exists():
        folder.mkdir(parents=True)
        rng = np.random.default_rng(0)
        for index in range(count):
            size = RESOLUTION[model]
            Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(folder / f"{index}.png")
    return folder


# ---------------------------------------------------------------------------------------------- commands
def peer_command(scripts: Path, model: str, method: str, steps: int, weights: Path, images: Path,
                 out: Path) -> list[str]:
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "1", "--num_machines", "1",
              "--mixed_precision", "bf16", "--dynamo_backend", "no"]
    common = ["--pretrained_model_name_or_path", str(weights), "--resolution", str(RESOLUTION[model]),
              "--train_batch_size", "1", "--max_train_steps", str(steps), "--output_dir", str(out),
              "--mixed_precision", "bf16", "--checkpointing_steps", "1000000", "--seed", "0"]
    dreambooth = ["--instance_data_dir", str(images), "--instance_prompt", PROMPT]
    if method == "lora":
        script = PEER_LORA_SCRIPTS[model]
        args = [*dreambooth, "--learning_rate", "1e-4", "--rank", "4"]
    elif method == "dreambooth":
        script, args = "train_dreambooth.py", [*dreambooth, "--learning_rate", "5e-6"]
    elif method == "ti":
        script = "textual_inversion.py"
        args = ["--train_data_dir", str(images), "--learnable_property", "object", "--placeholder_token", "<sks>",
                "--initializer_token", "dog", "--learning_rate", "5e-4", "--save_steps", "1000000"]
    elif method == "controlnet":
        script, args = "train_controlnet.py", ["--train_data_dir", str(images), "--learning_rate", "1e-5"]
    else:
        raise ValueError(method)
    return [*launch, str(scripts / script), *common, *args]


def smallest_memory_flags() -> list[str]:
    """Our flags for the smallest memory configuration that trains: checkpointing, Adafactor, an NF4 base if it can."""
    import importlib.util

    flags = ["--gradient-checkpointing", "--optimizer", "adafactor"]
    if importlib.util.find_spec("bitsandbytes") is not None:
        flags += ["--quantize-base", "nf4"]
    return flags


def our_command(model: str, method: str, steps: int, weights: Path, images: Path, out: Path,
                extra: list[str]) -> list[str]:
    args = [sys.executable, "-m", "sdtune_ui", "train", "--model", str(weights), "--data", str(images),
            "--resolution", str(RESOLUTION[model]), "--batch-size", "1", "--steps", str(steps), "--seed", "0",
            "--checkpointing-steps", "0", "--validation-steps", "0", "--output", str(out)]
    if method == "lora":
        args += ["--method", "lora", "--instance-prompt", PROMPT, "--lr", "1e-4", "--rank", "4"]
    elif method == "dreambooth":
        args += ["--method", "dreambooth", "--instance-prompt", PROMPT, "--lr", "5e-6"]
    elif method == "ti":
        args += ["--method", "textual_inversion", "--placeholder-token", "<sks>", "--initializer-token", "dog",
                 "--learnable-property", "object", "--lr", "5e-4"]
    elif method == "controlnet":   # the peer's captions, never emptied (its proportion_empty_prompts is 0)
        args += ["--method", "controlnet", "--lr", "1e-5", "--caption-dropout", "0"]
    return args + extra


# ---------------------------------------------------------------------------------------------- measuring
class GpuMemoryPoller:
    """Peak memory.used of GPU 0 (MiB) while it runs: the whole GPU, as a user's nvidia-smi shows it."""

    def __init__(self, interval_ms: int = 100):
        self.peak = 0
        if not shutil.which("nvidia-smi"):
            self.process = None
            return
        self.process = subprocess.Popen(
            ["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits", "-i", "0",
             f"-lms={interval_ms}"], stdout=subprocess.PIPE, text=True)
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        for line in self.process.stdout:
            try:
                self.peak = max(self.peak, int(line.strip()))
            except ValueError:
                continue

    def stop(self) -> int:
        if self.process is None:
            return 0
        self.process.terminate()
        self.process.wait(timeout=10)
        return self.peak


def newest_file_time(folder: Path, skip: tuple[str, ...] = ("logs",)) -> float | None:
    times = [p.stat().st_mtime for p in folder.rglob("*") if p.is_file()
             and not any(part in skip or part.startswith("checkpoint") for part in p.relative_to(folder).parts)]
    return max(times) if times else None


TQDM_RATE = re.compile(r"(\d+)/(\d+) \[[^\]]*?([\d.]+)(it/s|s/it)")


def peer_steady_rate(log: str, steps: int) -> float | None:
    """The peer's own progress bar (tqdm's smoothed rate) near the end of training."""
    rate = None
    for done, total, value, unit in TQDM_RATE.findall(log):
        if int(total) == steps and int(done) >= 0.8 * steps:
            rate = float(value) if unit == "it/s" else 1 / float(value)
    return rate


def our_details(run: Path) -> dict:
    events = [json.loads(line) for line in (run / "events.jsonl").read_text().splitlines() if line.strip()]
    steps = [e for e in events if e["kind"] == "step"]
    phases = {e["phase"]: e["seconds"] for e in events if e["kind"] == "log" and "phase" in e}
    phase_peaks = {e["phase"]: e["peak_gib"] for e in events if e["kind"] == "log" and "peak_gib" in e}
    first = events[0]["t"] if events else None
    running = next((e["t"] for e in events if e["kind"] == "status" and e.get("status") == "running"), None)
    last_step = steps[-1]["t"] if steps else None
    return {"steady_it_s": steps[-1]["it_s"] if steps else None, "phases_s": phases, "first_event_t": first,
            "allocated_peak_gib_by_phase_end": phase_peaks,
            "allocated_peak_gib": max((e.get("gpu_mem_gib") or 0 for e in steps), default=None),
            "events_first_to_running_s": round(running - first, 2) if running and first else None,
            "running_to_last_step_s": round(last_step - running, 2) if last_step and running else None,
            "logs": [e["message"] for e in events if e["kind"] == "log"][-12:],
            "status": next((e.get("message") for e in reversed(events) if e["kind"] == "status"), None)}


def run_process(command: list[str], out: Path, log_path: Path, timeout: float, env: dict) -> dict:
    poller = GpuMemoryPoller()
    started = time.time()
    with open(log_path, "w") as log:
        log.write("$ " + shlex.join(command) + "\n")
        log.flush()
        try:
            code = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, cwd=REPO, env=env,
                                  timeout=timeout).returncode
        except subprocess.TimeoutExpired:
            code = "timeout"
    ended = time.time()
    peak = poller.stop()
    output_time = newest_file_time(out / "output" if (out / "output").exists() else out)
    return {"command": shlex.join(command), "returncode": code, "started_t": round(started, 3),
            "process_s": round(ended - started, 2),
            "wall_s": round(output_time - started, 2) if output_time and code == 0 else None,
            "peak_mib": peak}


# ---------------------------------------------------------------------------------------------- rows
def measure_row(row: str, args: argparse.Namespace, env: dict, peers: dict) -> dict:
    model, method, steps, *flags = row.split(":")
    steps = int(steps)
    again = "again" in flags or "small" in flags   # rows of ours alone
    ours_only = args.ours_only or "ours" in flags
    work = Path(args.work)
    weights = Path(args.weights) if args.weights else ensure_weights(model, work)
    images = ensure_pairs(model, work) if method == "controlnet" else ensure_images(model, work)
    key = (model, method, steps)
    result = {"vs": "diffusers", "model": model, "method": method, "steps": steps, "batch": 1,
              "resolution": RESOLUTION[model], "precision": "bf16", "images": 5,
              "run": "smallest memory" if "small" in flags else "second (warm caches)" if again else "first"}
    remaining = args.deadline - time.time() if args.deadline else 1e9
    fixed_peer, step_peer, fixed_ours, step_ours = ESTIMATE[(model, method)]
    need = fixed_ours + step_ours * steps + (0 if again or ours_only else fixed_peer + step_peer * steps)
    if need > remaining:
        return {**result, "skipped": f"needs ~{need:.0f} s, {remaining:.0f} s left before the deadline"}
    name = f"{model}-{method}-{steps}"
    checkpointing = "ckpt" in flags   # both trainers with gradient checkpointing
    if checkpointing:
        name, key, result["gradient_checkpointing"] = f"{name}-ckpt", (*key, "ckpt"), True
    if not again and not ours_only:
        out = work / f"peer-{name}"
        command = peer_command(Path(args.peer_scripts), model, method, steps, weights, images, out)
        peer_env = {**env, "CUDA_CACHE_PATH": str(work / f"kernels-peer-{name}")}
        peer_env.update({"PYTHONPATH": args.peer_pythonpath} if args.peer_pythonpath else {})
        peers[key] = run_process(command + (["--gradient_checkpointing"] if checkpointing else []),
                                 out, work / f"peer-{name}.log", remaining, peer_env)
        log = (work / f"peer-{name}.log").read_text(errors="replace")
        peers[key]["steady_it_s"] = peer_steady_rate(log, steps)
        peers[key]["log_tail"] = log[-1500:] if peers[key]["returncode"] != 0 else None
        remaining = args.deadline - time.time() if args.deadline else 1e9
    suffix = "-small" if "small" in flags else "-again" if again else ""
    suffix += "".join("-" + re.sub(r"\W+", "", flag) for flag in args.ours_extra.split())  # its own output folder
    out = work / f"ours-{name}{suffix}"
    extra = args.ours_extra.split() + (smallest_memory_flags() if "small" in flags else [])
    extra += ["--gradient-checkpointing"] if checkpointing and "--gradient-checkpointing" not in extra else []
    kernels = work / f"kernels-ours-{name}{suffix.removeprefix('-again')}"   # a second run: its first run's cache
    ours = run_process(our_command(model, method, steps, weights, images, out, extra), out,
                       work / f"ours-{name}{suffix}.log", remaining, {**env, "CUDA_CACHE_PATH": str(kernels)})
    if (out / "events.jsonl").exists():
        ours.update(our_details(out))
    if ours["returncode"] != 0:
        ours["log_tail"] = (work / f"ours-{name}{suffix}.log").read_text(errors="replace")[-3000:]
    peer = peers.get(key)
    result.update(ours=ours, peer=peer)
    if peer and peer.get("wall_s") and ours.get("wall_s"):
        result["e2e_ratio"] = round(peer["wall_s"] / ours["wall_s"], 2)
        result["process_ratio"] = round(peer["process_s"] / ours["process_s"], 2)
        if peer.get("steady_it_s") and ours.get("steady_it_s"):
            result["steady_ratio"] = round(ours["steady_it_s"] / peer["steady_it_s"], 2)
        result["memory_ratio"] = round(ours["peak_mib"] / peer["peak_mib"], 2) if peer["peak_mib"] else None
    return result


def summary_lines(path: Path) -> list[str]:
    """A results file as a few lines a person reads at the end of a device call: ratio, wall, rate and memory of
    both trainers per row, our set-up phases with their allocated peaks, and the log tail of a failed run."""
    lines = []
    for line in path.read_text().splitlines() if path.exists() else []:
        row = json.loads(line)
        ours, peer = row.get("ours") or {}, row.get("peer") or {}
        lines.append(f"{row['model']} {row['method']} {row['steps']} {row.get('run')}: ratio {row.get('e2e_ratio')} | "
                     + " | ".join(f"{who} {run.get('wall_s')} s {run.get('steady_it_s')} it/s {run.get('peak_mib')} "
                                  f"MiB rc {run.get('returncode')}" for who, run in (("ours", ours), ("peer", peer)))
                     + f" {row.get('skipped') or ''}")
        lines.append(f"  ours phases {ours.get('phases_s')} {ours.get('allocated_peak_gib_by_phase_end')}")
        lines += [f"{who} log tail: {run['log_tail'][-1500:]}" for who, run in (("ours", ours), ("peer", peer))
                  if run.get("log_tail")]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("rows", nargs="*", help="MODEL:METHOD:STEPS[:again], in priority order")
    parser.add_argument("--peer-scripts", default="", help="Folder with diffusers' example training scripts.")
    parser.add_argument("--work", default="/tmp/side_by_side")
    parser.add_argument("--out", default="-", help="JSON lines file (appended), or - for stdout.")
    parser.add_argument("--deadline", type=float, default=0, help="Epoch seconds: rows that cannot finish by "
                        "then are written as skipped.")
    parser.add_argument("--ours-only", action="store_true", help="Measure our runs only (no peer).")
    parser.add_argument("--peer-pythonpath", default="", help="PYTHONPATH for the peer's process only, e.g. a "
                        "sitecustomize.py that gives it the environment fix our trainer makes itself.")
    parser.add_argument("--ours-extra", default="", help="Extra flags for our CLI, e.g. '--cuda-graph off'.")
    parser.add_argument("--weights", default="", help="Use this diffusers folder instead of random full-size "
                        "weights (a CPU smoke test of the commands with a tiny model).")
    parser.add_argument("--resolution", type=int, default=0, help="Override the model's resolution (smoke tests).")
    parser.add_argument("--save-weights", nargs=2, metavar=("MODEL", "FOLDER"), help=argparse.SUPPRESS)
    parser.add_argument("--save-inpaint-weights", nargs=2, metavar=("BASE", "FOLDER"), help=argparse.SUPPRESS)
    parser.add_argument("--summary", metavar="RESULTS", help="Print a short table of a results file and stop.")
    args = parser.parse_args()
    if args.summary:
        print("\n".join(summary_lines(Path(args.summary))))
        return
    if args.save_weights:
        save_weights(args.save_weights[0], Path(args.save_weights[1]))
        return
    if args.save_inpaint_weights:
        save_inpaint_weights(Path(args.save_inpaint_weights[0]), Path(args.save_inpaint_weights[1]))
        return
    Path(args.work).mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1", "WANDB_DISABLED": "true",
           "SDTUNE_HOME": str(Path(args.work) / "sdtune_home"), "SDTUNE_DATA_DIR": str(Path(args.work) / "data")}
    if args.resolution:
        RESOLUTION.update({model: args.resolution for model in RESOLUTION})
    import torch  # no CUDA context here: nvidia-smi's numbers are the runs' own

    device = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader", "-i", "0"],
                            capture_output=True, text=True).stdout.strip() if torch.cuda.is_available() else "cpu"
    peers: dict = {}
    for row in args.rows:
        started = time.time()
        result = measure_row(row, args, env, peers)
        if args.ours_extra:
            result["ours_extra"] = args.ours_extra
        result.update(device=device, torch=torch.__version__, seconds=round(time.time() - started, 1))
        line = json.dumps(result)
        if args.out == "-":
            print(line, flush=True)
        else:
            with open(args.out, "a") as handle:
                handle.write(line + "\n")
        summary = {k: result.get(k) for k in ("model", "method", "steps", "run", "e2e_ratio", "skipped")}
        summary.update({f"{who}_{k}": (result.get(who) or {}).get(k) for who in ("peer", "ours")
                        for k in ("wall_s", "steady_it_s", "peak_mib")})
        print("== " + json.dumps(summary), file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
