"""The metrics, each a documented function of images (and prompts) -> a number.

Image arguments are PIL images, or an (N, D) tensor of features already computed by the same extractor
(an evaluation computes each image set's features once and reuses them across metrics).

Similarities are cosine similarities in the extractor's feature space, so 1.0 is the most similar:
- subject fidelity (`subject_fidelity`): the DreamBooth paper's DINO and CLIP-I, the mean similarity over
  all (generated, training image) pairs;
- prompt fidelity (`prompt_fidelity`, CLIP-T): the mean similarity of each image to its prompt's text;
- class preservation (`class_preservation`): how alike the tuned and the base model's class-prompt images
  are, image by image (same seeds), 1.0 = unchanged;
- class drift (`class_drift`): how much closer the class-prompt images moved to the training images than the
  base's were; > 0 means "a photo of a robot" has started to draw the subject (overfitting, language drift).
FID and KID (`distribution_distance`) compare the feature distributions of generated and training images
(lower is closer) through torchmetrics.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch

from sdtune_ui.errors import SdtuneError
from sdtune_ui.evaluate.features import FeatureExtractor

Images = Sequence[Any] | torch.Tensor   # PIL images, or their (N, D) features
# torchmetrics warns on every KID that it keeps all features in memory: true, and a few dozen rows here.
warnings.filterwarnings("ignore", message="Metric `Kernel Inception Distance` will save all extracted features")
FID_CAVEAT = ("FID and KID here compare {generated} generated with {real} training images in {features} "
              "feature space. FID is biased upward with few images (its covariances need thousands for a stable "
              "value) and KID is unbiased but noisy at this size: compare numbers only between checkpoints and "
              "runs evaluated with the same image counts and features.")


def features_of(extractor: FeatureExtractor, images: Images) -> torch.Tensor:
    """Image features, computing them unless `images` already is a feature tensor."""
    if isinstance(images, torch.Tensor):
        return images.float()
    return extractor.image_features(list(images))


def _unit(rows: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.normalize(rows.float(), dim=-1)


def mean_pairwise_cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean cosine similarity over every (row of a, row of b) pair."""
    return float((_unit(a) @ _unit(b).T).mean())


def paired_cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean cosine similarity of row i of a with row i of b."""
    if a.shape != b.shape:
        raise ValueError(f"paired sets differ in shape: {tuple(a.shape)} vs {tuple(b.shape)}")
    return float((_unit(a) * _unit(b)).sum(dim=-1).mean())


def subject_fidelity(extractor: FeatureExtractor, generated: Images, training: Images) -> float:
    """DINO / CLIP-I: mean cosine similarity of every generated subject image to every training image."""
    return mean_pairwise_cosine(features_of(extractor, generated), features_of(extractor, training))


def prompt_fidelity(clip: FeatureExtractor, images: Images, prompts: Sequence[str]) -> float:
    """CLIP-T: mean cosine similarity of image i to the CLIP text embedding of prompts[i]."""
    image_rows = features_of(clip, images)
    if len(prompts) != len(image_rows):
        raise ValueError(f"{len(image_rows)} images but {len(prompts)} prompts")
    return paired_cosine(image_rows, clip.text_features(list(prompts)))


def class_preservation(extractor: FeatureExtractor, tuned_class: Images, base_class: Images) -> float:
    """Similarity of the tuned model's class-prompt images to the base model's, same seed for same index."""
    return paired_cosine(features_of(extractor, tuned_class), features_of(extractor, base_class))


def class_drift(extractor: FeatureExtractor, tuned_class: Images, base_class: Images, training: Images) -> float:
    """Subject fidelity of the tuned class images minus that of the base's: > 0 = the class drew the subject."""
    training_rows = features_of(extractor, training)
    return (subject_fidelity(extractor, tuned_class, training_rows)
            - subject_fidelity(extractor, base_class, training_rows))


# ---------------------------------------------------------------------------------------------- FID, KID
@dataclass
class DistributionDistance:
    """FID and KID of generated vs training images, with what they were measured on."""

    fid: float | None
    kid: float | None
    kid_std: float | None
    features: str            # "inception" or "dino:<model>" / "clip:<model>"
    real: int
    generated: int
    kid_subset_size: int
    caveat: str

    def to_dict(self) -> dict:
        return asdict(self)


class _TorchmetricsFeatures(torch.nn.Module):
    """Adapts an extractor to torchmetrics' custom-feature interface: uint8 images (N, 3, H, W) -> (N, D)."""

    def __init__(self, extractor: FeatureExtractor, dim: int):
        super().__init__()
        self.extractor = extractor
        self.num_features = dim

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        from PIL import Image

        pictures = [Image.fromarray(image.permute(1, 2, 0).cpu().numpy()) for image in images]
        return self.extractor.image_features(pictures)


def _uint8_batch(images: Sequence[Any], size: tuple[int, int]) -> torch.Tensor:
    """Images as one uint8 (N, 3, H, W) tensor at a common size (torchmetrics' input)."""
    import numpy as np
    from PIL import Image

    height, width = size
    arrays = [np.asarray(image.convert("RGB").resize((width, height), Image.Resampling.BICUBIC)) for image in images]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


def _inception_metrics(subset_size: int) -> tuple[Any, Any]:
    try:
        from torchmetrics.image.fid import FrechetInceptionDistance
        from torchmetrics.image.kid import KernelInceptionDistance

        return (FrechetInceptionDistance(feature=2048),
                KernelInceptionDistance(feature=2048, subset_size=subset_size))
    except ModuleNotFoundError as err:
        raise SdtuneError("FID/KID on Inception features need torch-fidelity (pip install torch-fidelity; its "
                          "weights download on first use). Offline, measure them on DINO or CLIP features "
                          "(--fid-features dino).") from err
    except (OSError, RuntimeError) as err:  # the weights could not be downloaded or read
        raise SdtuneError(f"The Inception weights for FID/KID could not be loaded ({err}). Offline, measure "
                          "FID/KID on DINO or CLIP features (--fid-features dino).") from err


def inception_available() -> bool:
    """True when torch-fidelity is installed and its Inception weights load (downloaded on first use)."""
    import importlib.util

    if importlib.util.find_spec("torch_fidelity") is None:
        return False
    try:
        _inception_metrics(2)
    except SdtuneError:
        return False
    return True


def distribution_distance(real: Sequence[Any], generated: Sequence[Any], features: FeatureExtractor | str,
                          *, which: Sequence[str] = ("fid", "kid"), seed: int = 0) -> DistributionDistance:
    """FID and KID of `generated` against `real` images (torchmetrics), on Inception or an extractor's features.

    KID's subset size is the smaller image count (torchmetrics needs it <= both) and its random subsets are
    seeded, so the same images give the same number.
    """
    from torchmetrics.image.fid import FrechetInceptionDistance
    from torchmetrics.image.kid import KernelInceptionDistance

    if len(real) < 2 or len(generated) < 2:
        raise SdtuneError("FID and KID need at least 2 training and 2 generated images.")
    subset_size = min(len(real), len(generated), 1000)
    if features == "inception":
        fid_metric, kid_metric = _inception_metrics(subset_size)
        size, label = (299, 299), "inception"
    elif isinstance(features, FeatureExtractor):
        probe = features.image_features(list(generated[:1]))
        module = _TorchmetricsFeatures(features, probe.shape[-1])
        fid_metric = FrechetInceptionDistance(feature=module) if "fid" in which else None
        kid_metric = KernelInceptionDistance(feature=module, subset_size=subset_size) if "kid" in which else None
        size, label = features.input_size, features.label
    else:
        raise SdtuneError(f"FID features must be 'inception' or a feature model, not {features!r}.")
    real_batch, generated_batch = _uint8_batch(real, size), _uint8_batch(generated, size)
    fid = kid = kid_std = None
    if fid_metric is not None and "fid" in which:
        fid_metric.update(real_batch, real=True)
        fid_metric.update(generated_batch, real=False)
        fid = _finite(fid_metric.compute())
    if kid_metric is not None and "kid" in which:
        kid_metric.update(real_batch, real=True)
        kid_metric.update(generated_batch, real=False)
        with torch.random.fork_rng(devices=[]):  # KID draws its subsets with torch's global generator
            torch.manual_seed(seed)
            mean, std = kid_metric.compute()
        kid, kid_std = _finite(mean), _finite(std)
    caveat = FID_CAVEAT.format(generated=len(generated), real=len(real), features=label)
    return DistributionDistance(fid, kid, kid_std, label, len(real), len(generated), subset_size, caveat)


def _finite(value: torch.Tensor) -> float | None:
    number = float(value)
    return number if math.isfinite(number) else None
