"""CheXlocalize tables: names, ids and paths, the two JSON formats and the labels CSV; then the real sample."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path, PurePosixPath

import numpy as np
import pytest
from cxrbench_chexlocalize.tables import (
    CHEXLOCALIZE_PATHOLOGIES,
    CHEXLOCALIZE_TO_CHEXPERT,
    CHEXPERT_TO_CHEXLOCALIZE,
    ChexlocalizeImageId,
    ChexlocalizeLayout,
    MaskRecord,
    from_chexpert_name,
    index_masks,
    read_annotations,
    read_labels_csv,
    read_segmentations,
    to_chexpert_name,
)
from cxrbench_chexpert.labels import ALL14

from cxrbench import masks
from cxrbench.errors import UsageError
from cxrbench.imageio import image_size
from cxrbench.masks import MaskDecodeError, encode_coco_rle, polygons_to_mask

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:pycocotools.*")

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
CHEXLOCALIZE = DATA / "chexlocalize"

LABEL_HEADER = "Path,Sex,Age,Frontal/Lateral,AP/PA," + ",".join(ALL14)


def real_root() -> Path:
    if not (CHEXLOCALIZE / "CheXlocalize" / "gt_segmentations_val.json").is_file():
        pytest.skip(f"real CheXlocalize sample not found under {CHEXLOCALIZE}")
    return CHEXLOCALIZE


def write_json(path: Path, data: object) -> Path:
    path.write_text(json.dumps(data))
    return path


def square(x0: float, y0: float, x1: float, y1: float) -> list[list[float]]:
    return [[x0, y0], [x1, y0], [x1, y1], [x0, y1]]


# --------------------------------------------------------------------------- names


def test_pathologies_and_their_chexpert_names():
    assert len(CHEXLOCALIZE_PATHOLOGIES) == len(set(CHEXLOCALIZE_PATHOLOGIES)) == 10
    differing = {k: v for k, v in CHEXLOCALIZE_TO_CHEXPERT.items() if k != v}
    assert differing == {"Airspace Opacity": "Lung Opacity"}
    assert set(CHEXLOCALIZE_TO_CHEXPERT.values()) <= set(ALL14)  # every name is a real CheXpert column
    assert set(ALL14) - set(CHEXPERT_TO_CHEXLOCALIZE) == {"No Finding", "Pneumonia", "Pleural Other", "Fracture"}
    assert to_chexpert_name("Airspace Opacity") == "Lung Opacity" and to_chexpert_name("Edema") == "Edema"
    assert from_chexpert_name("Lung Opacity") == "Airspace Opacity"
    with pytest.raises(ValueError, match="unknown CheXlocalize pathology 'Lung Opacity'"):
        to_chexpert_name("Lung Opacity")
    with pytest.raises(ValueError, match="not localized"):
        from_chexpert_name("Pneumonia")
    with pytest.raises(TypeError):
        CHEXLOCALIZE_TO_CHEXPERT["Edema"] = "x"  # type: ignore[index]


# --------------------------------------------------------------------------- ids and paths


def test_image_id_parsing_and_paths():
    key = ChexlocalizeImageId.parse("patient64541_study1_view1_frontal")
    assert (key.patient, key.study, key.view) == ("patient64541", "study1", "view1_frontal")
    assert str(key) == "patient64541_study1_view1_frontal"
    assert key.image_relpath("val") == PurePosixPath("CheXpert/val/patient64541/study1/view1_frontal.jpg")
    assert key.image_relpath("test") == PurePosixPath("CheXpert/test/patient64541/study1/view1_frontal.jpg")
    assert key.labels_path("val") == "CheXpert-v1.0/valid/patient64541/study1/view1_frontal.jpg"
    assert ChexlocalizeImageId.from_labels_path(key.labels_path("val")) == key
    assert ChexlocalizeImageId.from_labels_path(key.labels_path("test")) == key
    assert ChexlocalizeImageId.from_labels_path("patient64541/study1/view1_frontal.jpg") == key
    assert str(ChexlocalizeImageId.parse("patient1_study12_view2_lateral")) == "patient1_study12_view2_lateral"
    with pytest.raises(ValueError, match="split"):
        key.image_relpath("train")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "text",
    [
        "patient64541_study1_view1_frontal.jpg",
        "patient64541_study1_view1_frontal/../../etc",
        "../patient64541_study1_view1_frontal",
        "patient64541_study1_view1_oblique",
        "patientX_study1_view1_frontal",
        "patient1_study1_study1_view1_frontal",
        "",
    ],
)
def test_malformed_image_ids_are_refused(text):
    with pytest.raises(ValueError, match="not a CheXlocalize image id"):
        ChexlocalizeImageId.parse(text)


def test_parts_are_checked_one_by_one():
    with pytest.raises(ValueError):
        ChexlocalizeImageId("patient1_study1", "view1", "frontal")
    with pytest.raises(ValueError):
        ChexlocalizeImageId("patient1", "study1", "../view1_frontal")
    for bad in ["CheXpert-v1.0/valid/patient1/study1/view1_frontal.png", "patient1/study1/view1_frontal.jpg/x", "x"]:
        with pytest.raises(ValueError, match="not a CheXpert image path"):
            ChexlocalizeImageId.from_labels_path(bad)


def test_layout_paths_and_refusal_of_escapes(tmp_path):
    layout = ChexlocalizeLayout(tmp_path)
    assert layout.segmentations_json("val") == tmp_path / "CheXlocalize" / "gt_segmentations_val.json"
    assert layout.annotations_json("test") == tmp_path / "CheXlocalize" / "gt_annotations_test.json"
    assert layout.labels_csv("val") == tmp_path / "CheXpert" / "val_labels.csv"
    expected = (tmp_path / "CheXpert/val/patient7/study2/view1_frontal.jpg").resolve()
    assert layout.image_path("patient7_study2_view1_frontal", "val") == expected
    outside = tmp_path.parent / f"{tmp_path.name}-outside"
    (outside / "study1").mkdir(parents=True)
    (tmp_path / "CheXpert" / "val").mkdir(parents=True)
    os.symlink(outside, tmp_path / "CheXpert" / "val" / "patient8")  # a link that leaves the root
    with pytest.raises(UsageError, match="outside the dataset root"):
        layout.image_path("patient8_study1_view1_frontal", "val")
    with pytest.raises(ValueError, match="not a CheXlocalize image id"):
        layout.image_path("patient8_study1_view1_frontal/../../../x", "val")


# --------------------------------------------------------------------------- mask tables (synthetic)


def synthetic_segmentations(h: int = 40, w: int = 50) -> tuple[dict, dict]:
    """An annotations dict and the segmentations dict made from it (as cheXlocalize does)."""
    annotations = {
        "patient1_study1_view1_frontal": {
            "img_size": [h, w],
            "Cardiomegaly": [square(10, 10, 30, 25)],
            "Support Devices": [square(2, 2, 6, 30), square(4, 28, 45, 31)],  # overlapping polygons
        },
        "patient2_study1_view2_lateral": {"img_size": [w, h], "Airspace Opacity": [square(3.5, 4.2, 20.7, 9.9)]},
    }
    segmentations = {}
    for image_id, entry in annotations.items():
        size = entry["img_size"]
        segmentations[image_id] = {
            name: encode_coco_rle(polygons_to_mask(entry.get(name, []), *size)) for name in CHEXLOCALIZE_PATHOLOGIES
        }
    return annotations, segmentations


def test_read_segmentations_and_annotations_round_trip(tmp_path):
    annotations, segmentations = synthetic_segmentations()
    seg = read_segmentations(write_json(tmp_path / "seg.json", segmentations))
    ann = read_annotations(write_json(tmp_path / "ann.json", annotations))
    assert len(seg) == 20 and all(isinstance(r, MaskRecord) for r in seg)
    assert [r.pathology for r in seg[:10]] == list(CHEXLOCALIZE_PATHOLOGIES)
    assert [(r.image_id, r.pathology) for r in ann] == [
        ("patient1_study1_view1_frontal", "Cardiomegaly"),
        ("patient1_study1_view1_frontal", "Support Devices"),
        ("patient2_study1_view2_lateral", "Airspace Opacity"),
    ]
    assert ann[2].chexpert_name == "Lung Opacity"
    seg_index = index_masks(seg)
    for record in ann:
        ref = seg_index[(record.image_id, record.pathology)]
        assert ref.encoding == "coco_rle" and record.mask.encoding == "polygons"
        assert (ref.image_id, ref.class_name) == (record.image_id, record.pathology)
        np.testing.assert_array_equal(record.mask.decode(), ref.decode())
    assert seg_index[("patient2_study1_view2_lateral", "Edema")].is_empty
    assert seg_index[("patient2_study1_view2_lateral", "Edema")].size == (50, 40)
    full = read_annotations(tmp_path / "ann.json", all_pathologies=True)
    assert len(full) == 20 and sum(not r.mask.is_empty for r in full) == 3
    with pytest.raises(ValueError, match="two masks"):
        index_masks([*seg, seg[0]])


def test_reading_decodes_nothing(tmp_path, monkeypatch):
    annotations, segmentations = synthetic_segmentations()

    def refuse(*_args, **_kwargs):
        raise AssertionError("a mask was decoded while reading")

    monkeypatch.setattr(masks.coco_mask, "decode", refuse)
    monkeypatch.setattr(masks, "polygons_to_mask", refuse)
    assert len(read_segmentations(write_json(tmp_path / "s.json", segmentations))) == 20
    assert len(read_annotations(write_json(tmp_path / "a.json", annotations))) == 3


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda s: s.update({"patient1_study1_view1_frontal": []}), "expected an object of pathologies"),
        (lambda s: s.update({"../x": {}}), "not a CheXlocalize image id"),
        (lambda s: s["patient2_study1_view2_lateral"].pop("Edema"), "no mask for Edema"),
        (lambda s: s["patient2_study1_view2_lateral"].update({"Lung Opacity": {}}), "unknown pathology 'Lung Opacity'"),
        (lambda s: s["patient2_study1_view2_lateral"]["Edema"].update({"size": [50]}), "Edema: size must be"),
        (lambda s: s["patient2_study1_view2_lateral"]["Edema"].update({"size": [40, 50]}), "differs from"),
        (lambda s: s["patient2_study1_view2_lateral"]["Edema"].update({"counts": [2000]}), "compressed RLE string"),
        (lambda s: s["patient2_study1_view2_lateral"]["Edema"].pop("counts"), "expected {'size'"),
    ],
)
def test_malformed_segmentations_name_the_file(tmp_path, mutate, message):
    _, segmentations = synthetic_segmentations()
    mutate(segmentations)
    path = write_json(tmp_path / "gt_segmentations_val.json", segmentations)
    with pytest.raises(UsageError, match=message) as info:
        read_segmentations(path)
    assert str(info.value).startswith(str(path)) and "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda a: a["patient2_study1_view2_lateral"].pop("img_size"), "no img_size"),
        (lambda a: a["patient2_study1_view2_lateral"].update({"img_size": [50, 0]}), "img_size: size must be"),
        (lambda a: a["patient2_study1_view2_lateral"].update({"Edema": {"a": 1}}), "expected a list of polygons"),
        (lambda a: a["patient2_study1_view2_lateral"].update({"Edema": [[[1, 2]]]}), "Edema: polygon 0 has 1 point"),
        (lambda a: a["patient2_study1_view2_lateral"].update({"Edema": [[[1, "y"], [2, 2]]]}), "number pairs"),
        (lambda a: a["patient2_study1_view2_lateral"].update({"Nodule": []}), "unknown pathology 'Nodule'"),
    ],
)
def test_malformed_annotations_name_the_file(tmp_path, mutate, message):
    annotations, _ = synthetic_segmentations()
    mutate(annotations)
    path = write_json(tmp_path / "gt_annotations_val.json", annotations)
    with pytest.raises(UsageError, match=message) as info:
        read_annotations(path)
    assert str(info.value).startswith(str(path)) and "\n" not in str(info.value)


def test_unreadable_json_gives_one_line(tmp_path):
    broken = tmp_path / "gt_segmentations_val.json"
    broken.write_text('{"patient1_study1_view1_frontal": {\n  "Edema": ')
    with pytest.raises(UsageError, match=r"gt_segmentations_val.json: not valid JSON: .* line 2 column"):
        read_segmentations(broken)
    (tmp_path / "list.json").write_text("[1, 2]")
    with pytest.raises(UsageError, match="expected a JSON object"):
        read_annotations(tmp_path / "list.json")
    (tmp_path / "latin1.json").write_bytes(b'{"\xe9": 1}')
    with pytest.raises(UsageError, match="not UTF-8"):
        read_segmentations(tmp_path / "latin1.json")
    with pytest.raises(UsageError, match="cannot read .*missing.json"):
        read_segmentations(tmp_path / "missing.json")


def test_a_malformed_rle_fails_on_decoding_naming_the_mask(tmp_path):
    _, segmentations = synthetic_segmentations()
    segmentations["patient1_study1_view1_frontal"]["Edema"]["counts"] = "0"  # covers 0 of 2000 pixels
    records = read_segmentations(write_json(tmp_path / "s.json", segmentations))
    record = next(r for r in records if r.pathology == "Edema")
    with pytest.raises(MaskDecodeError, match="patient1_study1_view1_frontal/Edema: COCO RLE runs cover 0 pixels"):
        record.mask.decode()


# --------------------------------------------------------------------------- labels CSV (synthetic)


def write_labels(path: Path, rows: list[str], header: str = LABEL_HEADER, bom: bool = False) -> Path:
    text = "\n".join([header, *rows]) + "\n"
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + text.encode())
    return path


def label_line(path: str, values: list[str], age: str = "61") -> str:
    return f"{path},Female,{age},Frontal,PA," + ",".join(values)


def test_read_labels_csv(tmp_path):
    values = ["0.0"] * 14
    values[ALL14.index("Lung Opacity")] = "1.0"
    values[ALL14.index("Edema")] = "-1.0"
    values[ALL14.index("Fracture")] = ""
    rows = read_labels_csv(
        write_labels(
            tmp_path / "val_labels.csv",
            [
                label_line("CheXpert-v1.0/valid/patient3/study1/view1_frontal.jpg", values),
                label_line("CheXpert-v1.0/valid/patient3/study1/view2_lateral.jpg", ["1.0"] * 14, age=""),
            ],
            bom=True,
        )
    )
    assert [r.image_id for r in rows] == ["patient3_study1_view1_frontal", "patient3_study1_view2_lateral"]
    first = rows[0]
    assert (first.sex, first.age, first.frontal_lateral, first.ap_pa) == ("Female", 61, "Frontal", "PA")
    assert first.path == "CheXpert-v1.0/valid/patient3/study1/view1_frontal.jpg"
    assert list(first.labels) == list(ALL14)
    assert (
        first.labels["Lung Opacity"] == 1.0 and first.labels["Edema"] == -1.0 and math.isnan(first.labels["Fracture"])
    )
    local = first.chexlocalize_labels()
    assert list(local) == list(CHEXLOCALIZE_PATHOLOGIES)
    assert local["Airspace Opacity"] == 1.0 and local["Edema"] == -1.0 and local["Cardiomegaly"] == 0.0
    assert rows[1].age is None
    with pytest.raises(TypeError):
        first.labels["Edema"] = 1.0  # type: ignore[index]


@pytest.mark.parametrize(
    ("header", "line", "message"),
    [
        (LABEL_HEADER.replace(",Edema", ""), None, "no column"),
        (LABEL_HEADER, label_line("CheXpert-v1.0/valid/x.jpg", ["0"] * 14), "line 2: not a CheXpert image path"),
        (LABEL_HEADER, label_line("p/patient1/study1/view1_frontal.jpg", ["0"] * 13 + ["2"]), "line 2: Support"),
        (LABEL_HEADER, label_line("p/patient1/study1/view1_frontal.jpg", ["0"] * 13 + ["yes"]), "must be 1.0"),
        (LABEL_HEADER, label_line("p/patient1/study1/view1_frontal.jpg", ["0"] * 14, age="old"), "Age must be"),
        (LABEL_HEADER, label_line("p/patient1/study1/view1_frontal.jpg", ["0"] * 13), "13 fields|18 fields"),
        (LABEL_HEADER + ",Edema", None, "appears twice"),
    ],
)
def test_malformed_labels_csv(tmp_path, header, line, message):
    path = write_labels(tmp_path / "val_labels.csv", [line] if line else [], header=header)
    with pytest.raises(UsageError, match=message) as info:
        read_labels_csv(path)
    assert str(info.value).startswith(str(path)) and "\n" not in str(info.value)


def test_repeated_image_in_labels_csv(tmp_path):
    line = label_line("CheXpert-v1.0/valid/patient1/study1/view1_frontal.jpg", ["0"] * 14)
    with pytest.raises(UsageError, match="line 3: image patient1_study1_view1_frontal is already on line 2"):
        read_labels_csv(write_labels(tmp_path / "val_labels.csv", [line, line]))
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(UsageError, match="empty file"):
        read_labels_csv(tmp_path / "empty.csv")


# --------------------------------------------------------------------------- the real sample


@pytest.mark.realdata
def test_real_segmentations_are_image_sized_and_complete():
    root = real_root()
    layout = ChexlocalizeLayout(root)
    records = read_segmentations(layout.segmentations_json("val"))
    index = index_masks(records)
    image_ids = sorted({r.image_id for r in records})
    assert image_ids == ["patient64541_study1_view1_frontal", "patient64542_study1_view1_frontal"]
    assert len(records) == 20
    sizes = {}
    for image_id in image_ids:
        path = layout.image_path(image_id, "val")
        assert path.is_file()
        sizes[image_id] = image_size(path)
    assert sizes == {
        "patient64541_study1_view1_frontal": (2320, 2828),
        "patient64542_study1_view1_frontal": (2022, 2021),
    }
    annotated = {(r.image_id, r.pathology) for r in read_annotations(layout.annotations_json("val"))}
    for (image_id, pathology), ref in index.items():
        assert ref.size == sizes[image_id]
        if (image_id, pathology) not in annotated:
            assert ref.is_empty and ref.area() == 0
            decoded = ref.decode()
            assert decoded.shape == sizes[image_id] and not decoded.any()


@pytest.mark.realdata
def test_real_polygons_rasterise_to_the_published_masks(record_property):
    """Rasterising each polygon set reproduces gt_segmentations_val.json; IoU is recorded per mask."""
    root = real_root()
    layout = ChexlocalizeLayout(root)
    published = index_masks(read_segmentations(layout.segmentations_json("val")))
    annotations = read_annotations(layout.annotations_json("val"))
    assert len(annotations) == 4
    ious = {}
    for record in annotations:
        mask = record.mask.decode()
        ref = published[(record.image_id, record.pathology)]
        target = ref.decode()
        assert mask.shape == target.shape == ref.size
        iou = float((mask & target).sum() / (mask | target).sum())
        ious[f"{record.image_id}/{record.pathology}"] = iou
        # The method is cheXlocalize's own, so the masks match bit for bit, and so do the encodings.
        assert iou == 1.0
        assert encode_coco_rle(mask)["counts"] == ref.payload
    print("IoU per mask (rasterised polygons vs gt_segmentations_val.json):", ious)
    record_property("chexlocalize_polygon_iou", json.dumps(ious))
    assert len(ious) == 4


@pytest.mark.realdata
def test_real_labels_match_the_annotations_and_paths():
    root = real_root()
    layout = ChexlocalizeLayout(root)
    rows = read_labels_csv(layout.labels_csv("val"))
    assert [r.image_id for r in rows] == ["patient64541_study1_view1_frontal", "patient64542_study1_view1_frontal"]
    annotated = {(r.image_id, r.pathology) for r in read_annotations(layout.annotations_json("val"))}
    for row in rows:
        assert ChexlocalizeImageId.parse(row.image_id).labels_path("val") == row.path
        assert layout.image_path(row.image_id, "val").is_file()
        positive = {name for name, value in row.chexlocalize_labels().items() if value == 1.0}
        # The annotations hold exactly the findings labelled positive (cheXlocalize README).
        assert positive == {p for i, p in annotated if i == row.image_id}
    assert rows[0].chexlocalize_labels()["Airspace Opacity"] == rows[0].labels["Lung Opacity"] == 1.0
