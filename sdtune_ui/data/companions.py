"""The dataset doctor's checks of the pictures that belong to training images: masks (`a-masklabel.png`, masked
loss and inpainting) and condition pictures (`a-condlabel.png`, ControlNet training)."""

from __future__ import annotations

from sdtune_ui.data.formats import CONDITIONING_SUFFIX, is_image_name
from sdtune_ui.data.layouts import DatasetScan
from sdtune_ui.methods import CONTROL, method_named

# (severity, code, message, files): what the doctor turns into its Finding
Problem = tuple[str, str, str, list[str]]


def check_masks(scan: DatasetScan, sizes: dict[str, tuple[int, int]], findings: list[Problem]) -> None:
    if scan.masks_without_image:
        findings.append(("warning", "masks_without_image", f"{len(scan.masks_without_image)} mask(s) "
                                "(-masklabel.png) have no image of the same name beside them: rename or delete "
                                "them", scan.masks_without_image))
    for concept in scan.concepts:
        mine = [f for f in scan.files if f.concept == concept.name and f.name in sizes]
        unmasked = sorted(f.name for f in mine if f.mask_path is None)
        if unmasked and len(unmasked) < len(mine):
            where = f" in {concept.name}" if concept.name else ""
            findings.append(("warning", "missing_masks", f"{len(unmasked)} of {len(mine)} image(s){where} "
                                    "have no mask while the others do; with masked loss they train on the whole "
                                    "picture: add their -masklabel.png", unmasked))


def check_conditions(scan: DatasetScan, sizes: dict[str, tuple[int, int]], findings: list[Problem], method: str,
                     conditioning: str | None) -> None:
    """ControlNet training needs a condition picture for every image: from the dataset, or computed by a detector."""
    if not method_named(method).has(CONTROL):
        return
    usable = [f for f in scan.files if f.name in sizes]
    missing = sorted(f.name for f in usable if f.condition_path is None)
    if missing and conditioning in (None, "dataset"):
        findings.append(("error", "missing_conditions", f"{len(missing)} of {len(usable)} image(s) have no "
                                 "condition picture (a-condlabel.png beside a.png): add them, compute them with "
                                 "`python -m sdtune_ui dataset conditions DATA --detector canny` (or depth), or let "
                                 "the run compute them (conditioning canny or depth)", missing))
    elif missing:
        findings.append(("info", "computed_conditions", f"{len(missing)} image(s) have no condition picture: "
                                 f"the run computes them ({conditioning}) at its start", missing))
    folders = {f.path.parent for f in usable}
    stems = {f.path.parent / f.path.stem for f in usable}
    lonely = sorted(str(path.relative_to(scan.root)) for folder in folders for path in sorted(folder.iterdir())
                    if path.is_file() and is_image_name(path.name) and path.stem.endswith(CONDITIONING_SUFFIX)
                    and path.parent / path.stem[: -len(CONDITIONING_SUFFIX)] not in stems)
    if lonely:
        findings.append(("warning", "conditions_without_image", f"{len(lonely)} condition picture(s) "
                                 "(-condlabel) have no image of the same name beside them: rename or delete them",
                                 lonely))
