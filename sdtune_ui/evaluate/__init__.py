"""Know whether a run learned: metrics per checkpoint, the best checkpoint with its reason, sweeps.

    from sdtune_ui.evaluate import EvalSettings, evaluate_run, promote_checkpoint, run_sweep
"""

from sdtune_ui.evaluate.evaluation import METRICS, EvalSettings, EvaluationResult, evaluate_run, read_metrics
from sdtune_ui.evaluate.features import feature_models, release_feature_models
from sdtune_ui.evaluate.selection import BestCheckpoint, best_checkpoint, promote_checkpoint

__all__ = [
    "METRICS",
    "BestCheckpoint",
    "EvalSettings",
    "EvaluationResult",
    "best_checkpoint",
    "evaluate_run",
    "feature_models",
    "promote_checkpoint",
    "read_metrics",
    "release_feature_models",
]
