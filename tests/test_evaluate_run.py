"""`evaluate` on a tiny trained run: metrics.jsonl (one line per checkpoint, re-evaluation replaces lines),
metric events, the best checkpoint with its reason, the CLI's JSON, promote ("use this checkpoint"), and the
scores in the model card."""

from __future__ import annotations

import json
import shutil

import pytest
from generate_helpers import one_torch_thread, trained_run  # noqa: F401 - autouse fixture (one torch thread)

from sdtune_ui.errors import SdtuneError
from sdtune_ui.evaluate import EvalSettings, evaluate_run, promote_checkpoint, read_metrics
from sdtune_ui.evaluate.evaluation import select_targets
from sdtune_ui.evaluate.selection import REPLACED_OUTPUT, promoted_step
from sdtune_ui.generate.engine import GenerationEngine
from sdtune_ui.runs import RunDir

# Offline feature models and fast generation: 2 images per prompt, 3 denoising steps at 32 px.
FAST_EVAL = dict(clip_model="tiny-clip", dino_model="tiny-dino", num_images=2, inference_steps=3, size=32)
FAST_FLAGS = ["--clip-model", "tiny-clip", "--dino-model", "tiny-dino", "--num-images", "2",
              "--inference-steps", "3", "--size", "32"]


@pytest.fixture(scope="module")
def engine() -> GenerationEngine:
    return GenerationEngine(device="cpu")


@pytest.fixture
def run(tmp_path) -> RunDir:
    """A private copy of the tiny LoRA run (checkpoint at step 3, output at step 6)."""
    target = tmp_path / "lora-run"
    shutil.copytree(trained_run("lora"), target)
    return RunDir(target)


def test_evaluate_writes_metrics_events_and_picks_a_best_checkpoint(run, engine):
    result = evaluate_run(run.path, settings=EvalSettings(**FAST_EVAL), engine=engine)

    lines = [json.loads(line) for line in (run.path / "metrics.jsonl").read_text().splitlines()]
    assert [(r["source"], r["step"]) for r in lines] == [("base", 0), ("checkpoint", 3), ("output", 6)]
    for line in lines:
        assert set(line["metrics"]) == {"dino", "clip_i", "clip_t", "class_preservation", "class_drift", "fid",
                                        "kid", "kid_std", "loss"}
        assert line["images"] == {"subject": 4, "class": 2, "training": 8, "per_prompt": 2}
        assert line["settings"]["dino_model"] == "tiny-dino" and line["fid_kid"]["features"] == "dino:tiny-dino"
        assert "compare numbers only" in line["fid_kid"]["caveat"]
    base, step3, final = lines
    assert base["metrics"]["class_preservation"] == 1.0 and base["metrics"]["class_drift"] == 0.0
    # The LoRA changed the model: its class images differ from the base's, its held-out loss moved.
    assert step3["metrics"]["class_preservation"] < 1.0 and final["metrics"]["loss"] != base["metrics"]["loss"]
    assert step3["prompts"] == {"subject": ["a photo of sks robot", "a photo of sks robot on a beach"],
                                "clip_text": ["a photo of robot", "a photo of robot on a beach"],
                                "class": "a photo of a robot"}

    events = [e for e in run.read_events() if e["kind"] == "metric"]
    assert [(e["source"], e["step"]) for e in events] == [("base", 0), ("checkpoint", 3), ("output", 6)]
    assert events[1]["metrics"] == step3["metrics"]

    assert result.best is not None and (result.best.source, result.best.step) in {("checkpoint", 3), ("output", 6)}
    assert result.best.reason.startswith("highest subject fidelity (DINO")
    assert json.loads(json.dumps(result.to_dict()))["best"]["reason"] == result.best.reason
    assert (run.path / "eval" / "step-3" / "p0-seed-0.png").exists()

    # Re-scoring one checkpoint replaces its line; nothing is duplicated.
    evaluate_run(run.path, checkpoints="3", settings=EvalSettings(metrics=("loss",), **FAST_EVAL), engine=engine)
    again = read_metrics(run.path)
    assert [(r["source"], r["step"]) for r in again] == [("base", 0), ("checkpoint", 3), ("output", 6)]
    assert set(again[1]["metrics"]) == {"loss"} and again[1]["metrics"]["loss"] == step3["metrics"]["loss"]


def test_checkpoint_choices_and_their_errors(run):
    assert [(t.source, t.step) for t in select_targets(run, "all")] == [("checkpoint", 3), ("output", 6)]
    assert [(t.source, t.step) for t in select_targets(run, "last")] == [("output", 6)]
    assert [(t.source, t.step) for t in select_targets(run, "6,3")] == [("output", 6), ("checkpoint", 3)]
    with pytest.raises(SdtuneError, match=r"step\(s\) 5 .*available: 3, 6"):
        select_targets(run, "5")
    with pytest.raises(SdtuneError, match="Cannot evaluate: unknown metric"):
        EvalSettings(metrics=("sharpness",)).validate()


def test_cli_evaluate_prints_json_and_writes_the_file(run, capsys):
    from sdtune_ui.cli.main import main

    code = main(["evaluate", str(run.path), "--checkpoints", "last", "--metrics", "dino,loss", "--json",
                 *FAST_FLAGS])
    assert code == 0
    printed = json.loads(capsys.readouterr().out)
    assert [(s["source"], s["step"]) for s in printed["scores"]] == [("base", 0), ("output", 6)]
    assert printed["scores"] == read_metrics(run.path)
    assert printed["best"]["step"] == 6 and set(printed["scores"][1]["metrics"]) == {"dino", "loss"}


def test_promote_makes_a_checkpoint_the_output_and_keeps_the_final_one(run, engine, tmp_path):
    from sdtune_ui.export.formats import export_run
    from sdtune_ui.generate.artifacts import materialize_checkpoint, run_artifacts

    evaluate_run(run.path, settings=EvalSettings(metrics=("dino", "loss"), **FAST_EVAL), engine=engine)
    final_bytes = (run.output_dir / "pytorch_lora_weights.safetensors").read_bytes()
    files = promote_checkpoint(run.path, 3, reason="chosen in a test")

    # The promoted output is like a finished run's: the diffusers file, plus the kohya copy and README.txt.
    assert files == sorted([run.output_dir / "pytorch_lora_weights.safetensors", run.output_dir / "README.txt",
                            run.output_dir / f"{run.path.name}.safetensors"])
    promoted = (run.output_dir / "pytorch_lora_weights.safetensors").read_bytes()
    assert promoted == (materialize_checkpoint(run.path, 3) / "pytorch_lora_weights.safetensors").read_bytes()
    assert promoted != final_bytes
    assert (run.path / REPLACED_OUTPUT / "pytorch_lora_weights.safetensors").read_bytes() == final_bytes
    assert promoted_step(run.path) == 3
    event = [e for e in run.read_events() if e["kind"] == "output"][-1]
    assert event["promoted_from_step"] == 3 and event["reason"] == "chosen in a test"
    assert run_artifacts(run.path).artifacts[0].path.startswith(str(run.output_dir))
    # The old output's scores now describe output-final/; the output is scored as checkpoint 3 from here on.
    assert [(r["source"], r["step"]) for r in read_metrics(run.path)] == [
        ("base", 0), ("checkpoint", 3), (REPLACED_OUTPUT, 6)]
    assert [(t.source, t.step) for t in select_targets(run, "all")] == [("checkpoint", 3)]

    # The card of the exported output shows checkpoint 3's scores beside the base model's.
    card = (export_run(run.path, "diffusers", tmp_path / "export")[-1]).read_text()
    step3 = next(r for r in read_metrics(run.path) if r["step"] == 3)
    assert "## Evaluation" in card and "at step 3" in card
    assert f"| subject fidelity, DINO (higher is better) | {step3['metrics']['dino']:.4f} |" in card

    # Promoting again replaces the copy; output-final still holds the trained final output.
    promote_checkpoint(run.path, 3)
    assert (run.path / REPLACED_OUTPUT / "pytorch_lora_weights.safetensors").read_bytes() == final_bytes


def test_promote_refuses_a_running_run(run):
    run.events().emit("status", status="running")
    with pytest.raises(SdtuneError, match="still training"):
        promote_checkpoint(run.path, 3)


def test_app_entry_points_run_through_the_job_queue(run):
    from sdtune_ui.app.evaluation import run_metrics, submit_evaluation, use_checkpoint
    from sdtune_ui.app.jobs import JobQueue

    jobs = JobQueue()
    try:
        runs_dir, run_id = run.path.parent, run.path.name
        assert run_metrics(runs_dir, run_id) == {"rows": [], "best": None, "promoted_from_step": None}
        job = submit_evaluation(jobs, runs_dir, run_id, EvalSettings(metrics=("dino", "loss"), **FAST_EVAL))
        assert job.wait(120) and job.error is None, job.error
        # The queue panel showed its progress: base, checkpoint 3 and the output.
        assert (job.unit, job.done_count, job.total_count) == ("checkpoint", 3, 3)
        shown = run_metrics(runs_dir, run_id)
        assert {(r["source"], r["step"], r["metric"]) for r in shown["rows"]} == {
            (source, step, metric) for source, step in (("base", 0), ("checkpoint", 3), ("output", 6))
            for metric in ("dino", "loss")}
        assert shown["best"]["reason"].startswith("highest subject fidelity")
        # The promoted output has the diffusers weights plus the copies other tools load (kohya/A1111).
        assert use_checkpoint(runs_dir, run_id, 3) == [
            "README.txt", "lora-run.safetensors", "pytorch_lora_weights.safetensors"]
        assert run_metrics(runs_dir, run_id)["promoted_from_step"] == 3
        with pytest.raises(SdtuneError, match="not a run id"):
            run_metrics(runs_dir, "../elsewhere")
        with pytest.raises(SdtuneError, match=r"nothing saved at step\(s\) 5"):   # refused before it queues
            submit_evaluation(jobs, runs_dir, run_id, checkpoints="5")
    finally:
        jobs.close()


def test_eval_steps_logs_the_heldout_loss_that_evaluate_measures_too(tmp_path, engine):
    from sdtune_ui.config import TrainConfig
    from sdtune_ui.examples import EXAMPLE_DATASET
    from sdtune_ui.train import train

    config = TrainConfig(model="tiny-sd1", method="lora", data=str(EXAMPLE_DATASET), resolution=32,
                         max_train_steps=4, checkpointing_steps=0, eval_steps=2, learning_rate=1e-2, log_every=1,
                         validation_steps=0, instance_prompt="a photo of sks robot", with_prior_preservation=True,
                         class_prompt="a photo of a robot", num_class_images=2, validation_inference_steps=2)
    assert train(config, tmp_path / "run") == "completed"
    run = RunDir(tmp_path / "run")
    probes = [e for e in run.read_events() if e["kind"] == "metric"]
    assert [(e["source"], e["step"]) for e in probes] == [("training", 2), ("training", 4)]
    assert set(probes[0]["metrics"]) == {"loss", "loss_class"} and probes[0]["metrics"] != probes[1]["metrics"]
    # The same fixed noise and timesteps as `evaluate`: the final probe equals the final output's score.
    scored = evaluate_run(run.path, checkpoints="last", engine=engine,
                          settings=EvalSettings(metrics=("loss",), **FAST_EVAL)).scores[-1]["metrics"]
    assert scored["loss"] == pytest.approx(probes[-1]["metrics"]["loss"], abs=1e-4)
    assert scored["loss_class"] == pytest.approx(probes[-1]["metrics"]["loss_class"], abs=1e-4)
