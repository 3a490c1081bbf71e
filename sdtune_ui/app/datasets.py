"""The Dataset tab's view of a dataset folder, without gradio: every training image of every layout (kohya
concept folders, concepts, imagefolder splits) with its caption, mask and condition picture (ControlNet), and
importing a Hub dataset.
Edits (captions, deleting, cropping, masks) are sdtune_ui.data.edit's.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from sdtune_ui.errors import DatasetError

MAX_PUBLIC_HUB_IMAGES = 200  # a public app imports at most this many rows of a Hub dataset


@dataclass
class DatasetImage:
    name: str            # posix path relative to the dataset root ("10_sks dog/a.png")
    path: Path
    caption: str         # what it trains with: its own caption, else its folder's prompt
    own_caption: bool    # False: the caption shown is the folder's prompt (kohya, concepts)
    concept: str = ""
    mask: Path | None = None
    condition: Path | None = None   # its ControlNet condition picture (a-condlabel.png)

    @property
    def mask_name(self) -> str:
        return self.mask.name if self.mask else ""


def dataset_images(root: str | Path) -> tuple[list[DatasetImage], str]:
    """Every training image as the trainer reads the folder, and the layout's description."""
    from sdtune_ui.data.layouts import scan_dataset

    scan = scan_dataset(Path(root), strict=False)
    images = [DatasetImage(f.name, f.path, f.text, f.caption is not None, f.concept, f.mask_path, f.condition_path)
              for f in scan.files]
    return images, scan.description


def import_hub_dataset(target: Path, repo_id: str, *, split: str = "train", max_images: int | None = None,
                       public: bool = False, image_column: str = "", caption_column: str = "") -> object:
    """Copy a Hub dataset's images and captions into a dataset folder (through the same checks as uploads).

    Needs the network once; a public app imports at most MAX_PUBLIC_HUB_IMAGES rows.
    """
    from huggingface_hub import constants

    from sdtune_ui.data.hub import ingest_hub_dataset
    from sdtune_ui.hub import check_repo_id

    check_repo_id(repo_id.strip(), "user/dataset-name")
    if constants.HF_HUB_OFFLINE:
        raise DatasetError("Importing from the Hub needs the network, and the Hub is switched off here "
                           "(HF_HUB_OFFLINE=1). Download the dataset elsewhere and add its folder or a zip.")
    if public:
        max_images = min(max_images or MAX_PUBLIC_HUB_IMAGES, MAX_PUBLIC_HUB_IMAGES)
    return ingest_hub_dataset(repo_id.strip(), target, split=split or "train", max_images=max_images or None,
                              image_column=image_column or None, caption_column=caption_column or None)
