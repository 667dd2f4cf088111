"""Benchmark readers on fixture folders written here in each dataset's exact layout (mmseg conventions)."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cocu.evaluation.dataset_layouts import COCO_OBJECT_LUT, LAYOUTS
from cocu.evaluation.datasets import DatasetError, SegDataset, open_dataset
from cocu.evaluation.metrics import prepare_label

H, W = 10, 14


def write_image(path: Path, seed: int, size=(H, W)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, size=(*size, 3), dtype=np.uint8)).save(path, quality=95)


def write_label(path: Path, label: np.ndarray, mode: str = "L") -> None:
    """Palette ("P", like VOC's SegmentationClass) or grayscale ("L", like the mmseg converters) ids."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(label.astype(np.uint8), mode="L")
    if mode == "P":
        image = image.convert("P")
        image.putpalette(np.random.default_rng(0).integers(0, 256, 768).astype(np.uint8).tolist())
    image.save(path)


def label_map(seed: int, values: list[int], border: int | None = None, size=(H, W)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    label = np.asarray(values)[rng.integers(0, len(values), size=size)]
    if border is not None:  # VOC-style ignore border around objects
        label[0, :] = border
        label[:, -1] = border
    return label


def make_voc(
    root: Path, year="VOC2012", ann="SegmentationClass", split="ImageSets/Segmentation/val.txt", values=(0, 1, 15, 20)
) -> dict[str, np.ndarray]:
    base = root / "VOCdevkit" / year
    labels = {}
    for i, name in enumerate(["2007_000033", "2007_000042", "2008_000009"]):
        write_image(base / "JPEGImages" / f"{name}.jpg", i)
        labels[name] = label_map(i, list(values), border=255)
        write_label(base / ann / f"{name}.png", labels[name], mode="P" if year == "VOC2012" else "L")
    (base / split).parent.mkdir(parents=True, exist_ok=True)
    (base / split).write_text("2007_000033\n2008_000009\n")  # the split, not the folder, decides
    return {k: labels[k] for k in ("2007_000033", "2008_000009")}


def make_flat(
    base: Path, img_dir: str, ann_dir: str, names, img_suffix: str, ann_suffix: str, values, border=None, mode="L"
) -> dict[str, np.ndarray]:
    labels = {}
    for i, name in enumerate(names):
        write_image(base / img_dir / f"{name}{img_suffix}", i)
        labels[name] = label_map(i, list(values), border=border)
        write_label(base / ann_dir / f"{name}{ann_suffix}", labels[name], mode)
    return labels


def check_pairs(dataset: SegDataset, expected: dict[str, np.ndarray], num_classes: int) -> None:
    assert isinstance(dataset, SegDataset)
    assert len(dataset.classes) == num_classes
    assert [name for name, _, _ in dataset] == sorted(expected) == [item[0] for item in dataset.items]
    for name, image, label in dataset:
        assert image.dtype == np.uint8 and image.shape == (*label.shape, 3)
        np.testing.assert_array_equal(label, expected[name])
        counts = np.bincount(label.ravel().astype(np.int64))
        np.testing.assert_array_equal(counts, np.bincount(expected[name].ravel().astype(np.int64)))


def test_voc_reads_the_split_palette_pngs_and_keeps_the_ignore_border(tmp_path):
    expected = make_voc(tmp_path)
    data = open_dataset("voc", tmp_path)  # a data root holding VOCdevkit/VOC2012
    check_pairs(data, expected, 21)
    assert data.has_background and data.ignore_index == 255 and not data.reduce_zero_label
    assert open_dataset("voc", tmp_path / "VOCdevkit" / "VOC2012").root == data.root  # or the folder itself
    voc20 = open_dataset("voc20", tmp_path)  # TCL: background ignored, the rest shift down
    label = prepare_label(voc20[0][2], voc20.reduce_zero_label).numpy()
    assert len(voc20.classes) == 20 and set(np.unique(label)) == {0, 14, 19, 255}


def test_context_and_context59(tmp_path):
    expected = make_voc(
        tmp_path, "VOC2010", "SegmentationClassContext", "ImageSets/SegmentationContext/val.txt", values=(0, 1, 33, 59)
    )
    check_pairs(open_dataset("context", tmp_path), expected, 60)
    c59 = open_dataset("context59", tmp_path)
    assert c59.classes[0] == "aeroplane" and c59.classes[-1] == "wood" and c59.reduce_zero_label


def test_coco_object_from_converted_maps_and_from_raw_stuffthingmaps(tmp_path):
    names = ["000000000139", "000000000285"]
    converted = make_flat(
        tmp_path / "coco",
        "images/val2017",
        "annotations/val2017",
        names,
        ".jpg",
        "_instanceTrainIds.png",
        values=(0, 1, 80),
    )
    data = open_dataset("coco_object", tmp_path)
    check_pairs(data, converted, 81)
    assert data.has_background and "instanceTrainIds" in data.label_source

    # raw 0-based COCO ids: person 0 -> 1, stop sign 12 -> 12, hair drier 88 -> 79, toothbrush 89 -> 80 (10 unused
    # ids skipped below them); stuff (91..181) and unlabelled 255 -> background 0, nothing ignored
    raw_values = [0, 12, 88, 89, 91, 181, 255]
    raw = make_flat(
        tmp_path / "coco_stuff164k", "images/val2017", "annotations/val2017", names, ".jpg", ".png", values=raw_values
    )
    data = open_dataset("coco_object", tmp_path / "coco_stuff164k")
    assert "raw COCO-Stuff" in data.label_source
    check_pairs(data, {k: COCO_OBJECT_LUT[v] for k, v in raw.items()}, 81)
    assert [int(COCO_OBJECT_LUT[v]) for v in raw_values] == [1, 12, 79, 80, 0, 0, 0]


def test_coco_stuff_reads_label_train_ids(tmp_path):
    names = ["000000000139"]
    expected = make_flat(
        tmp_path / "coco_stuff164k",
        "images/val2017",
        "annotations/val2017",
        names,
        ".jpg",
        "_labelTrainIds.png",
        values=(0, 80, 170),
        border=255,
    )
    data = open_dataset("coco_stuff", tmp_path)
    check_pairs(data, expected, 171)
    assert not data.has_background and data.classes[-1] == "wood"


def test_cityscapes_reads_label_train_ids_from_city_folders(tmp_path):
    base = tmp_path / "cityscapes"
    expected = {}
    for i, (city, stem) in enumerate([("frankfurt", "frankfurt_000000_000294"), ("lindau", "lindau_000001_000019")]):
        write_image(base / "leftImg8bit/val" / city / f"{stem}_leftImg8bit.png", i)
        expected[f"{city}/{stem}"] = label_map(i, [0, 10, 18], border=255)
        write_label(base / "gtFine/val" / city / f"{stem}_gtFine_labelTrainIds.png", expected[f"{city}/{stem}"])
        write_label(base / "gtFine/val" / city / f"{stem}_gtFine_labelIds.png", label_map(i, [7, 33]))  # not read
    check_pairs(open_dataset("cityscapes", tmp_path), expected, 19)


def test_ade20k_zero_label_is_ignored_after_reduction(tmp_path):
    names = ["ADE_val_00000001", "ADE_val_00000002"]
    expected = make_flat(
        tmp_path / "ADEChallengeData2016",
        "images/validation",
        "annotations/validation",
        names,
        ".jpg",
        ".png",
        values=(0, 1, 8, 150),
    )
    data = open_dataset("ade20k", tmp_path)
    check_pairs(data, expected, 150)
    assert data.classes[7] == "bed " and data.reduce_zero_label
    reduced = prepare_label(data[0][2], True).numpy()
    assert set(np.unique(reduced)) <= {0, 7, 149, 255} and (reduced == 255).sum() == (expected[names[0]] == 0).sum()


def test_imagenet_s_decodes_rgb_ids_ignores_1000_and_downsamples_large_images(tmp_path):
    base = tmp_path / "ImageNetS" / "ImageNetS50"
    ids = np.array([[0, 1, 50], [1000, 50, 0]], dtype=np.int32).repeat(5, 0).repeat(7, 1)  # 10 x 21
    big = (1001, 1000)
    for wnid, stem, size, label in [
        ("n01443537", "ILSVRC2012_val_00000236", ids.shape, ids),
        ("n01491361", "ILSVRC2012_val_00004894", big, np.full(big, 5, np.int32)),
    ]:
        write_image(base / "validation" / wnid / f"{stem}.JPEG", 0, size=size)
        rgb = np.stack([label % 256, label // 256, np.zeros_like(label)], axis=-1).astype(np.uint8)
        (base / "validation-segmentation" / wnid).mkdir(parents=True, exist_ok=True)
        Image.fromarray(rgb, mode="RGB").save(base / "validation-segmentation" / wnid / f"{stem}.png")
    data = open_dataset("imagenet_s50", tmp_path)
    assert len(data) == 2 and len(data.classes) == 51 and data.ignore_index == 1000 and data.has_background
    name, image, label = data[0]
    assert name == "n01443537/ILSVRC2012_val_00000236" and image.shape == (10, 21, 3)
    np.testing.assert_array_equal(label, ids)
    _, image, label = data[1]  # 1001 x 1000 > 1000^2 pixels: the image shrinks to long side 1000, the label does not
    assert image.shape == (1000, 999, 3) and label.shape == big


def test_synthetic_world_val_split(small_world):
    world, record = small_world
    data = open_dataset("synthetic", world)
    assert len(data) == 40 and data.classes == tuple(record["classes"]) and len(data.classes) == 52
    assert not data.has_background and not data.reduce_zero_label
    name, image, label = data[0]
    assert name == "000000" and image.shape == (64, 64, 3) and label.max() < 52
    assert open_dataset("synthetic", world / "val").items == data.items


@pytest.mark.parametrize("name", sorted(LAYOUTS))
def test_a_missing_root_or_folder_is_one_clear_line(tmp_path, name):
    with pytest.raises(DatasetError) as err:
        open_dataset(name, tmp_path / "nowhere")
    assert str(tmp_path / "nowhere") in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(DatasetError) as err:
        open_dataset(name, tmp_path)  # exists but holds nothing of the layout
    message = str(err.value)
    assert "\n" not in message and LAYOUTS[name].img_dir in message and LAYOUTS[name].ann_dir in message


def test_missing_annotation_folder_split_or_file_is_named(tmp_path):
    make_voc(tmp_path)
    base = tmp_path / "VOCdevkit" / "VOC2012"
    (base / "SegmentationClass" / "2008_000009.png").unlink()
    with pytest.raises(DatasetError, match=r"SegmentationClass/2008_000009\.png: missing file .* listed in ImageSets"):
        open_dataset("voc", tmp_path)
    (base / "ImageSets" / "Segmentation" / "val.txt").unlink()
    with pytest.raises(
        DatasetError, match=r"VOC2012: PASCAL VOC 2012 layout incomplete, missing ImageSets/Segmentation/"
    ):
        open_dataset("voc", tmp_path)
    for png in (base / "SegmentationClass").iterdir():
        png.unlink()
    (base / "SegmentationClass").rmdir()
    with pytest.raises(DatasetError, match=r"missing SegmentationClass/, ImageSets/Segmentation/val.txt"):
        open_dataset("voc", tmp_path)


def test_wrong_label_files_are_refused_with_the_file_named(tmp_path):
    names = ["frankfurt_000000_000294"]
    base = tmp_path / "cityscapes"
    write_image(base / "leftImg8bit/val/frankfurt" / f"{names[0]}_leftImg8bit.png", 0)
    label_path = base / "gtFine/val/frankfurt" / f"{names[0]}_gtFine_labelTrainIds.png"
    write_label(label_path, label_map(0, [7, 33]))  # labelIds saved under the trainIds name
    data = open_dataset("cityscapes", tmp_path)
    with pytest.raises(
        DatasetError, match=r"labelTrainIds\.png: label value \d+ is neither a class id \(0\.\.18\) nor the ignore"
    ):
        data[0]
    Image.fromarray(np.zeros((H, W, 3), np.uint8)).save(label_path)  # an RGB colour map
    with pytest.raises(DatasetError, match="expected a palette or grayscale label PNG"):
        data[0]
    write_label(label_path, np.zeros((H + 1, W), np.uint8))
    with pytest.raises(DatasetError, match="label is 14x11 but its image"):
        data[0]
    label_path.write_bytes(b"not a png")
    with pytest.raises(DatasetError, match="unreadable label image"):
        data[0]
