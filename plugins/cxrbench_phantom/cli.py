"""``cxrbench phantom ...``: export the phantom as NIH / CheXpert / CheXlocalize / VinDr-CXR / RSNA / SIIM files."""

from __future__ import annotations

from pathlib import Path

import click
import cv2
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from cxrbench.api import UsageError

from .chexlocalize_export import write_chexlocalize_layout
from .dataset import Options, generator_for
from .export import write_chexpert_layout, write_nih_layout
from .preview import contact_sheet, pick_images
from .rsna_export import write_rsna_layout
from .siim_export import write_siim_layout
from .vindr_export import write_vindr_layout

UNCERTAIN_LAYOUTS = ("chexpert", "chexlocalize")
DICOM_LAYOUTS = ("vindr", "rsna_pneumonia", "siim")


def _check(**values: object) -> Options:
    """Validate the common options, turning a complaint into a one-line usage error."""
    options = Options(**values)  # type: ignore[arg-type]
    try:
        options.validate()
    except ValueError as exc:
        flag = str(exc).split(" ", 1)[0].replace("_", "-")
        raise UsageError(f"--{flag}: {exc}") from None
    return options


@click.group("phantom")
def phantom() -> None:
    """Synthetic chest X-rays with planted lesions and their exact boxes.

    The phantom dataset needs no files: a grid names it (dataset: phantom) and every
    image is generated on demand from a seed. These commands write it to disk in the
    layouts of the real datasets, so the NIH, CheXpert, CheXlocalize, VinDr-CXR, RSNA
    Pneumonia and SIIM-ACR loaders can be tried end to end, and draw a contact sheet.

    \b
    Examples:
      cxrbench phantom preview --out phantom.png
      cxrbench phantom export --layout nih --out data/nih-phantom --num-images 500
      cxrbench phantom export --layout chexpert --out data/chexpert-phantom --uncertain-rate 0.2
      cxrbench phantom export --layout chexlocalize --out data/chexlocalize-phantom
      cxrbench phantom export --layout vindr --out data/vindr-phantom --num-images 300
    """  # noqa: D301 - click's \b (no rewrap) marker must stay a real backspace


@phantom.command("export")
@click.option(
    "--layout", type=click.Choice(["nih", "chexpert", "chexlocalize", *DICOM_LAYOUTS]), required=True,
    help="nih: images/*.png, Data_Entry_2017_v2020.csv, BBox_List_2017.csv (boxes in 1024-px "
    "coordinates), train_val_list.txt, test_list.txt. chexpert: CheXpert-v1.0-small/train.csv, "
    "valid.csv and JPEGs under train/ and valid/. chexlocalize: CheXpert/{val,test}/ JPEGs and "
    "{val,test}_labels.csv, CheXlocalize/gt_segmentations_{val,test}.json (COCO RLE lesion masks) "
    "and gt_annotations_{val,test}.json (their contours), plus CheXpert-v1.0-small/ with the "
    "training images (the dataset's chexpert_root; its valid/ = the val images). vindr: train.csv (3 "
    "readers per image, jittered boxes) and train/<image_id>.dicom. rsna_pneumonia: stage_2_train_labels.csv "
    "(Pneumonia lesions as 'Lung Opacity' boxes in 1024-px coordinates) and stage_2_train_images/*.dcm. siim: "
    "train-rle.csv (one row per pneumothorax region) and dicom-images-train/<study>/<series>/*.dcm.",
)  # fmt: skip
@click.option(
    "--out",
    "out",
    type=click.Path(file_okay=False, path_type=Path),
    required=True,
    help="Folder to write into (created if missing; files of the same names are replaced).",
)
@click.option("--num-images", type=int, default=1000, show_default=True, help="Number of images, all splits.")
@click.option(
    "--image-size",
    type=int,
    default=None,
    help="Side of the written images in pixels [default: 320 for chexpert and chexlocalize, 256 for the others; "
    "siim at most 1024].",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Same seed, same files.")
@click.option(
    "--difficulty",
    type=float,
    default=0.3,
    show_default=True,
    help="Lesion conspicuity: 0 = obvious, 1 = contrast near the noise level.",
)
@click.option(
    "--uncertain-rate",
    type=float,
    default=None,
    help="chexpert and chexlocalize: share of present findings labelled -1.0 (uncertain) in train.csv "
    "[default: 0.1].",
)
def export(
    layout: str, out: Path, num_images: int, image_size: int | None, seed: int, difficulty: float,
    uncertain_rate: float | None,
) -> None:  # fmt: skip
    """Write the phantom in a real dataset's published layout.

    The split is the phantom dataset's own, patient-disjoint: train and val images go to
    the training list (NIH train_val_list.txt / CheXpert train.csv), test images to the
    test list (test_list.txt / valid.csv). NIH boxes are written for every lesion of the
    test images that have findings, as in the real BBox_List_2017.csv. chexlocalize:
    val images go to CheXlocalize's val (and the release's valid.csv), test images to its
    test, train images to CheXpert-v1.0-small/train.csv; each pathology's mask is the
    union of the lesions of the findings labelled with it. vindr, rsna_pneumonia and
    siim write 8-bit DICOM and every image as a training image (their datasets split
    by a hash of the id); see the README's phantom section for each one's classes.
    """
    if layout not in UNCERTAIN_LAYOUTS and uncertain_rate is not None:
        raise UsageError("--uncertain-rate: only the chexpert layout (and the chexlocalize one's train.csv) "
                         "has uncertain labels")
    size = image_size if image_size is not None else (320 if layout in UNCERTAIN_LAYOUTS else 256)
    if layout == "siim" and size > 1024:
        raise UsageError(f"--image-size: the siim layout's masks are 1024 px, so images are at most 1024, got {size}")
    _check(num_images=num_images, image_size=size, seed=seed, difficulty=difficulty)
    rate = 0.1 if uncertain_rate is None else uncertain_rate
    if not 0.0 <= rate <= 1.0:
        raise UsageError(f"--uncertain-rate: must be between 0 and 1, got {rate}")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"--out: cannot create {out}: {exc.strerror}") from None

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, transient=False) as bar:
        task = bar.add_task(f"phantom -> {layout} layout", total=num_images)

        def progress(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        common = dict(num_images=num_images, image_size=size, seed=seed, difficulty=difficulty, progress=progress)
        try:
            if layout == "nih":
                write_nih_layout(out, **common)  # type: ignore[arg-type]
            elif layout == "chexpert":
                write_chexpert_layout(out, uncertain_rate=rate, **common)  # type: ignore[arg-type]
            elif layout == "chexlocalize":
                write_chexlocalize_layout(out, uncertain_rate=rate, **common)  # type: ignore[arg-type]
            else:
                writer = {"vindr": write_vindr_layout, "rsna_pneumonia": write_rsna_layout, "siim": write_siim_layout}
                writer[layout](out, **common)  # type: ignore[operator]
        except OSError as exc:
            raise UsageError(f"--out: {exc}") from None
    click.echo(f"wrote {num_images} phantom images in {layout} layout to {out}")


@phantom.command("preview")
@click.option(
    "--out",
    "out",
    type=click.Path(dir_okay=False, path_type=Path),
    required=True,
    help="PNG file to write the contact sheet to.",
)
@click.option("--count", type=click.IntRange(1, 64), default=12, show_default=True, help="Images on the sheet.")
@click.option("--columns", type=click.IntRange(1, 16), default=4, show_default=True, help="Images per row.")
@click.option("--image-size", type=int, default=256, show_default=True, help="Side of each image, pixels.")
@click.option("--seed", type=int, default=0, show_default=True, help="Phantom seed.")
@click.option(
    "--difficulty",
    type=float,
    default=0.3,
    show_default=True,
    help="Lesion conspicuity: 0 = obvious, 1 = contrast near the noise level.",
)
def preview(out: Path, count: int, columns: int, image_size: int, seed: int, difficulty: float) -> None:
    """Write a contact sheet of phantom images with their boxes.

    The sheet is chosen so that every finding appears at least once, plus one image
    without findings; each caption gives the image id and its findings.
    """
    options = _check(num_images=max(200, count), image_size=image_size, seed=seed, difficulty=difficulty)
    gen = generator_for(options)
    sheet = contact_sheet(gen, pick_images(gen, count), columns=columns)
    if out.suffix.lower() != ".png":
        raise UsageError(f"--out: write the preview to a .png file, got {out}")
    if out.parent and not out.parent.exists():
        raise UsageError(f"--out: folder {out.parent} does not exist")
    if not cv2.imwrite(str(out), sheet):
        raise UsageError(f"--out: could not write {out}")
    click.echo(f"wrote {out}")
