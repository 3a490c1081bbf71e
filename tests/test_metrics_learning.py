"""The metrics see learning and over-training on a real fine-tune of the pre-trained demo model demo-sd1.

A LoRA (rank 16, every UNet layer and the text encoder, lr 1e-3, no prior preservation, so the class drifts)
checkpointed at 100 and 300 steps, scored by `evaluate` with the offline demo-dino (a small DINOv2 trained on the
demo model's scenes, scripts/pretrain_demo_features.py: it sees object, colour, background and the example
subject), 4 images, 10 steps, guidance 5. Measured (2-core machine, one torch thread):

    checkpoint   DINO    class preservation   class drift   held-out loss
    base         0.215   1.000                 0.000        0.112
    step 100     0.581   0.393                 0.457        0.024
    step 300     0.767   0.268                 0.522        0.015

What holds, and is asserted (margins about half the measured effects): both checkpoints rank above the base for
subject fidelity, the best by DINO alone is the longest-trained; the class images move away from the base's as
training goes on; the held-out loss falls; and the over-training is flagged by class drift: "a photo of a
robot" draws the red subject (tests/test_learning.py sees it on pixels) and both checkpoints' class images
moved far toward the training pictures, so the best-checkpoint rule (class drift under EvalSettings' 0.05)
finds no checkpoint that kept the class and says so instead of recommending the final one.
What is not asserted: that step 300 drifted more than step 100. Without prior preservation this recipe draws
the subject for the class prompt from its first checkpoint on (drift at steps 50..300, checkpointing every 50:
0.28, 0.46, 0.55, 0.58, 0.50, 0.52; at lr 2e-4: -0.01, -0.05, then 0.29..0.42 from step 150, when the subject
appears): learning the subject and drifting the class come together, because demo-sd1 reads "sks robot" almost
as "a robot" until its text encoder is tuned. The README's demo run (prior preservation, 16 class images) ends
with a drift of -0.06 and class preservation 0.66 (DINO 0.603 over the base's 0.215): tests/test_cli_demo.py
asserts that contrast on it (the same settings without its validation samples: -0.02, 0.72, DINO 0.384; that
run's step 100 had drifted 0.27 before the class images pulled the class back).

With the random tiny-dino (before demo-dino) the same run read base 0.496, step 100 0.531, step 300 0.557 for
DINO and a class drift of -0.040 and -0.071: it does not see what the pixels show, so drift could not flag it.
Before demo-sd1 this test ran on the random tiny-sd1 (full fine-tune at 32 px): with the re-drawn example
pictures its subject fidelity no longer rose over the base (0.226 against 0.237).
"""

from __future__ import annotations

import pytest
from generate_helpers import one_torch_thread  # noqa: F401 - autouse fixture (one torch thread)

from sdtune_ui.config import TrainConfig
from sdtune_ui.evaluate import EvalSettings, best_checkpoint, evaluate_run
from sdtune_ui.examples import EXAMPLE_DATASET
from sdtune_ui.generate.engine import GenerationEngine
from sdtune_ui.train import train

MODEL = "demo-sd1"
MARGINS = {"fidelity_over_base": 0.15, "preservation_drop": 0.06, "loss_ratio": 0.4, "drift": 0.2}


@pytest.mark.slow
def test_metrics_see_the_subject_learned_and_flag_the_class_drifting_to_it(tmp_path):
    config = TrainConfig(model=MODEL, method="lora", rank=16, lora_targets="all", train_text_encoder=True,
                         learning_rate=1e-3, data=str(EXAMPLE_DATASET), train_batch_size=4, max_train_steps=300,
                         checkpointing_steps=100, log_every=50, validation_steps=0,
                         instance_prompt="a photo of sks robot", class_prompt="a photo of a robot")
    assert train(config, tmp_path / "run") == "completed"
    settings = EvalSettings(metrics=("dino", "drift", "loss"), clip_model="tiny-clip", dino_model="demo-dino",
                            num_images=4, inference_steps=10, guidance=5.0)
    result = evaluate_run(tmp_path / "run", checkpoints="100,300", settings=settings,
                          engine=GenerationEngine(device="cpu"))
    base, early, final = (r["metrics"] for r in result.scores)
    print(base, early, final)  # the margins, with pytest -s

    # Learned: the checkpoints' subject images are closer to the training images than the base model's.
    assert early["dino"] > base["dino"] + MARGINS["fidelity_over_base"]
    assert final["dino"] > early["dino"] and best_checkpoint(result.scores, "dino", max_drift=1.0).step == 300
    # Over-training moves the class: "a photo of a robot" draws less and less of what the base drew for it.
    assert final["class_preservation"] < early["class_preservation"] - MARGINS["preservation_drop"]
    assert early["class_preservation"] < 0.7
    # ... toward the subject: the class drift flags it, and the best-checkpoint rule refuses to recommend one.
    assert min(early["class_drift"], final["class_drift"]) > MARGINS["drift"] > EvalSettings().max_drift
    best = best_checkpoint(result.scores, "dino", max_drift=EvalSettings().max_drift)
    assert "every checkpoint drifted" in best.reason, best.reason
    # The held-out loss falls with training.
    assert early["loss"] < MARGINS["loss_ratio"] * base["loss"] and final["loss"] < early["loss"]
