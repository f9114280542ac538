"""The data layer: readers, splits, torchvision-equivalent transforms, and the loader."""

from __future__ import annotations

import dataclasses
import io
import logging
import pickle
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
from PIL import Image

from cli.config import DataConfig, HorizontalFlipOptions, RandomResizedCropOptions
from cli.data import DataLoader, build_datasets, build_split
from cli.data.cifar10 import cifar10_splits
from cli.data.dataset import ArrayImages, ImageDataset, Samples
from cli.data.digits import load_digits
from cli.data.imagefolder import IMG_EXTENSIONS, find_classes, imagefolder_splits
from cli.data.npz import npz_splits
from cli.data.transforms import (
    CenterCrop,
    Compose,
    Normalize,
    RandomHorizontalFlip,
    RandomResizedCrop,
    Resize,
    ToTensor,
    make_transform,
)
from cli.errors import DataError

SMALL = DataConfig(image_size=8, resize=8, mean=(0.5,) * 3, std=(0.5,) * 3)


def rgb(width: int, height: int, seed: int = 0) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def generator(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


# ------------------------------------------------------------------- digits


def test_digits_are_the_1797_uci_images_in_ten_classes():
    images, labels = load_digits()
    assert images.shape == (1797, 8, 8) and images.dtype == np.float32
    assert images.min() == 0.0 and images.max() == 1.0
    assert np.array_equal(np.unique(labels), np.arange(10))
    assert labels[:10].tolist() == list(range(10))


def test_digits_split_is_stratified_and_seeded():
    train, val, names = build_datasets(SMALL, seed=0)
    assert names == [str(d) for d in range(10)]
    assert (len(train), len(val)) == (1438, 359)
    assert np.abs(np.bincount(val.labels) - 0.2 * np.bincount(load_digits()[1])).max() <= 0.5
    again, _, _ = build_datasets(SMALL, seed=0)
    other, _, _ = build_datasets(SMALL, seed=1)
    assert again.identity() == train.identity() != other.identity()


def test_digit_images_become_normalised_three_channel_arrays():
    train, _, _ = build_datasets(dataclasses.replace(SMALL, image_size=32, resize=32), seed=0)
    image, label = train[0]
    assert image.shape == (3, 32, 32) and image.dtype == np.float32
    assert np.array_equal(image[0], image[2]) and -1.0 <= image.min() < image.max() <= 1.0
    assert isinstance(label, int)


def test_class_selection_relabels_in_the_listed_order_and_limit_caps_training():
    cfg = dataclasses.replace(SMALL, classes=("7", "5"), limit=100)
    train, val, names = build_datasets(cfg, seed=0)
    assert names == ["7", "5"] and len(train) == 100
    digits = load_digits()[1]
    assert len(train) + len(val) < (digits == 7).sum() + (digits == 5).sum()
    assert set(val.labels) == {0, 1} and len(val) == 72
    with pytest.raises(DataError, match="no class '11'"):
        build_datasets(dataclasses.replace(SMALL, classes=("1", "11")), seed=0)


# -------------------------------------------------------------- imagefolder


def make_folder(root: Path, layout: dict[str, list[str]]) -> None:
    for cls, files in layout.items():
        for i, name in enumerate(files):
            path = root / cls / name
            path.parent.mkdir(parents=True, exist_ok=True)
            if path.suffix.lower() in IMG_EXTENSIONS:
                image = rgb(12, 10, seed=i)
                fmt = "JPEG" if path.suffix.lower() in (".jpg", ".jpeg") else "PNG"
                image.save(path, format=fmt)
            else:
                path.write_text("not an image")


def test_imagefolder_orders_classes_and_files_as_torchvision(tmp_path):
    make_folder(
        tmp_path,
        {"cat": ["b.png", "a.JPG", "notes.txt", "sub/c.jpeg"], "Dog": ["x.png"], "ant": ["z.PNG"]},
    )
    classes, class_to_idx = find_classes(tmp_path)
    assert classes == ["Dog", "ant", "cat"] and class_to_idx == {"Dog": 0, "ant": 1, "cat": 2}
    train, val, names = imagefolder_splits(tmp_path)
    assert val is None and names == classes
    paths = [p.relative_to(tmp_path).as_posix() for p in train.source.paths]
    assert paths == ["Dog/x.png", "ant/z.PNG", "cat/a.JPG", "cat/b.png", "cat/sub/c.jpeg"]
    assert train.labels.tolist() == [0, 1, 2, 2, 2]


def test_imagefolder_errors_use_torchvision_messages(tmp_path):
    with pytest.raises(DataError, match=f"^Couldn't find any class folder in {tmp_path}.$"):
        imagefolder_splits(tmp_path)
    make_folder(tmp_path, {"a": ["1.png"], "b": ["readme.txt"], "c": []})
    (tmp_path / "c").mkdir()
    with pytest.raises(DataError) as caught:
        imagefolder_splits(tmp_path)
    assert str(caught.value) == (
        "Found no valid file for the classes b, c. Supported extensions are: "
        ".jpg, .jpeg, .png, .ppm, .bmp, .pgm, .tif, .tiff, .webp"
    )


def test_imagefolder_train_and_val_folders(tmp_path):
    make_folder(tmp_path / "train", {"a": ["1.png", "2.png"], "b": ["1.png"]})
    make_folder(tmp_path / "val", {"a": ["1.png"], "b": ["1.png", "2.png"]})
    cfg = dataclasses.replace(SMALL, dataset="imagefolder", root=tmp_path)
    train, val, names = build_datasets(cfg, seed=0)
    assert names == ["a", "b"] and (len(train), len(val)) == (3, 3)
    assert val.labels.tolist() == [0, 1, 1]
    assert train[0][0].shape == (3, 8, 8)
    make_folder(tmp_path / "val", {"c": ["1.png"]})
    with pytest.raises(DataError, match="only in val: \\['c'\\]"):
        build_datasets(cfg, seed=0)


def test_imagefolder_test_folder_is_a_split_of_its_own(tmp_path):
    make_folder(tmp_path / "train", {"a": ["1.png", "2.png"], "b": ["1.png", "2.png"]})
    cfg = dataclasses.replace(SMALL, dataset="imagefolder", root=tmp_path, val_fraction=0.5)
    with pytest.raises(DataError, match="no test split: add .*test/<class>"):
        build_split(cfg, 0, "test")
    make_folder(tmp_path / "test", {"a": ["1.png"], "b": ["1.png", "2.png", "3.png"]})
    test, names = build_split(cfg, 0, "test")
    assert names == ["a", "b"] and test.labels.tolist() == [0, 1, 1, 1]
    assert test.deterministic and test[0][0].shape == (3, 8, 8)
    train, val, _ = build_datasets(cfg, seed=0)
    assert (len(train), len(val)) == (2, 2)  # the test images stay out of training
    evaluated, _ = build_split(cfg, 0, "train")  # the training images, without augmentation
    assert evaluated.identity().split()[:2] == train.identity().split()[:2]
    test, _ = build_split(dataclasses.replace(cfg, classes=("b",)), 0, "test")
    assert test.labels.tolist() == [0, 0, 0]
    make_folder(tmp_path / "test", {"c": ["1.png"]})
    with pytest.raises(DataError, match="only in test: \\['c'\\]"):
        build_split(cfg, 0, "test")
    with pytest.raises(DataError, match="only an ImageFolder"):
        build_split(SMALL, 0, "test")


@pytest.fixture
def folder_with_a_bad_image(tmp_path):
    make_folder(tmp_path, {"a": ["1.png", "2.png", "3.png"], "b": ["1.jpg", "2.jpg"]})
    (tmp_path / "a" / "2.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    return tmp_path


def test_unreadable_image_stops_with_its_path(folder_with_a_bad_image):
    cfg = dataclasses.replace(SMALL, dataset="imagefolder", root=folder_with_a_bad_image)
    train, _, _ = build_datasets(dataclasses.replace(cfg, val_fraction=0.0), seed=0)
    with pytest.raises(DataError, match=r"cannot read image .*a/2\.png.*on_bad_image=skip"):
        list(DataLoader(train, batch_size=2))


def test_unreadable_image_is_skipped_counted_and_warned_once(folder_with_a_bad_image, caplog):
    cfg = DataConfig(
        dataset="imagefolder",
        root=folder_with_a_bad_image,
        val_fraction=0.0,
        on_bad_image="skip",
        image_size=8,
        resize=8,
    )
    train, _, _ = build_datasets(cfg, seed=0)
    loader = DataLoader(train, batch_size=2, num_workers=2)
    with caplog.at_level(logging.WARNING, logger="cli.data.dataset"):
        sizes = [len(labels) for _, labels in loader] + [len(labels) for _, labels in loader]
    assert sizes == [1, 2, 1, 1, 2, 1]
    assert train.skipped == [str(folder_with_a_bad_image / "a" / "2.png")]
    assert len([r for r in caplog.records if "2.png" in r.getMessage()]) == 1


def test_identity_changes_when_a_file_changes(tmp_path):
    make_folder(tmp_path, {"a": ["1.png"], "b": ["1.png"]})
    cfg = DataConfig(dataset="imagefolder", root=tmp_path, val_fraction=0.0)
    before = build_datasets(cfg, seed=0)[0].identity()
    assert build_datasets(cfg, seed=0)[0].identity() == before
    rgb(20, 20, seed=9).save(tmp_path / "a" / "1.png")
    assert build_datasets(cfg, seed=0)[0].identity() != before


# -------------------------------------------------------- cifar10 and npz


def write_cifar(root: Path, per_batch: int = 4) -> None:
    root.mkdir(parents=True)
    names = [f"class{i}".encode() for i in range(10)]
    (root / "batches.meta").write_bytes(pickle.dumps({b"label_names": names}, protocol=2))
    for i, name in enumerate([f"data_batch_{n}" for n in range(1, 6)] + ["test_batch"]):
        data = np.full((per_batch, 3072), i, dtype=np.uint8)
        data[:, :1024] = 200  # the red plane
        batch = {b"data": data, b"labels": [(i + k) % 10 for k in range(per_batch)]}
        (root / name).write_bytes(pickle.dumps(batch, protocol=2))


def test_cifar10_batches_load_as_rgb_images(tmp_path):
    write_cifar(tmp_path / "cifar-10-batches-py")
    train, val, names = cifar10_splits(tmp_path)
    assert names[:2] == ["class0", "class1"] and (len(train), len(val)) == (20, 4)
    image = np.asarray(train.source.load(4))
    assert image.shape == (32, 32, 3) and image[0, 0].tolist() == [200, 1, 1]
    assert val.labels.tolist() == [5, 6, 7, 8]


def test_cifar10_refuses_pickles_that_build_other_objects(tmp_path):
    write_cifar(tmp_path / "cifar")

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    (tmp_path / "cifar" / "test_batch").write_bytes(pickle.dumps({b"data": Evil()}, protocol=2))
    with pytest.raises(DataError, match="refusing to load (__builtin__|builtins).print"):
        cifar10_splits(tmp_path / "cifar")


def test_npz_accepts_nchw_floats_and_class_names(tmp_path):
    x = np.random.default_rng(0).random((6, 3, 5, 4)).astype(np.float32)
    path = tmp_path / "d.npz"
    np.savez(
        path, x_train=x, y_train=np.arange(6) % 2, x_val=x[:2], y_val=[1, 0], classes=["no", "yes"]
    )
    train, val, names = npz_splits(path)
    assert names == ["no", "yes"] and (len(train), len(val)) == (6, 2)
    image = np.asarray(train.source.load(1))
    assert image.shape == (5, 4, 3)
    assert np.array_equal(image[..., 2], np.round(x[1, 2] * 255).astype(np.uint8))


def test_npz_problems_are_data_errors(tmp_path):
    path = tmp_path / "d.npz"
    np.savez(path, x_train=np.zeros((2, 4, 4), np.uint8), y_train=[0, 1])
    with pytest.raises(DataError, match="missing arrays \\['x_val', 'y_val'\\]"):
        npz_splits(path)
    np.savez(
        path, x_train=np.zeros((2, 4, 4, 5)), y_train=[0, 1], x_val=np.zeros((1, 4, 4)), y_val=[0]
    )
    with pytest.raises(DataError, match="expected images NHWC"):
        npz_splits(path)
    path.write_bytes(b"not a zip")
    with pytest.raises(DataError, match="cannot read"):
        npz_splits(path)


# --------------------------------------------------------------- transforms


def test_resize_scales_the_shorter_side_like_torchvision():
    image = rgb(40, 30)
    assert Resize(15)(image).size == (20, 15)
    assert Resize(15)(rgb(31, 47)).size == (15, 22)  # int(15 * 47 / 31) = 22
    assert Resize(30)(image) is image  # already the right size: untouched
    assert np.array_equal(
        np.asarray(Resize(15)(image)), np.asarray(image.resize((20, 15), Image.Resampling.BILINEAR))
    )


def test_center_crop_rounds_offsets_as_torchvision():
    image = rgb(7, 6)
    # left = round((7 - 2) / 2) = round(2.5) = 2, top = round((6 - 2) / 2) = 2
    crop = CenterCrop(2)(image)
    assert np.array_equal(np.asarray(crop), np.asarray(image)[2:4, 2:4])


def test_random_resized_crop_is_deterministic_and_within_bounds():
    crop = RandomResizedCrop(16)
    image = rgb(50, 40)
    first, again = crop(image, generator(3)), crop(image, generator(3))
    assert np.array_equal(np.asarray(first), np.asarray(again))
    boxes = {crop.params(50, 40, generator(seed)) for seed in range(200)}
    assert len(boxes) > 150
    for top, left, h, w in boxes:
        assert 0 <= top <= 40 - h and 0 <= left <= 50 - w
        assert 0.08 * 2000 - 50 <= h * w <= 2000 and 3 / 4 - 0.1 < w / h < 4 / 3 + 0.1
    assert crop(image, generator(0)).size == (16, 16)


def test_random_resized_crop_falls_back_to_a_central_crop():
    # a full-area crop of aspect ratio 2..3 never fits a square: the 10 tries fail
    crop = RandomResizedCrop(8, scale=(1.0, 1.0), ratio=(2.0, 3.0))
    assert crop.params(30, 30, generator()) == (7, 0, 15, 30)  # w = 30, h = round(30 / 2)
    wide = RandomResizedCrop(8, scale=(1.0, 1.0), ratio=(0.25, 0.5))
    assert wide.params(30, 30, generator()) == (0, 7, 30, 15)  # h = 30, w = round(30 * 0.5)


def test_horizontal_flip_probability_and_determinism():
    image = rgb(5, 4)
    mirrored = np.asarray(image)[:, ::-1]
    assert np.array_equal(np.asarray(RandomHorizontalFlip(1.0)(image, generator())), mirrored)
    assert RandomHorizontalFlip(0.0)(image, generator()) is image
    flips = [RandomHorizontalFlip()(image, generator(s)) is not image for s in range(400)]
    assert 150 < sum(flips) < 250


def test_to_tensor_and_normalize():
    image = rgb(3, 2)
    array = ToTensor()(image)
    assert array.shape == (3, 2, 3) and array.dtype == np.float32
    assert np.array_equal(array, np.asarray(image).transpose(2, 0, 1).astype(np.float32) / 255)
    gray = ToTensor()(Image.fromarray(np.full((2, 2), 0.25, dtype=np.float32)))
    assert gray.shape == (3, 2, 2) and np.all(gray == 0.25)  # "F" images are not rescaled
    normal = Normalize((0.5, 0.25, 0.0), (0.5, 0.5, 2.0))(np.ones((3, 1, 1), np.float32))
    assert normal.ravel().tolist() == [1.0, 1.5, 0.5] and normal.dtype == np.float32


def test_make_transform_follows_the_config():
    cfg = DataConfig(
        image_size=16,
        resize=20,
        augment=(RandomResizedCropOptions(), HorizontalFlipOptions()),
    )
    train, evaluation = make_transform(cfg, train=True), make_transform(cfg, train=False)
    assert [type(s) for s in train.steps] == [
        RandomResizedCrop,
        RandomHorizontalFlip,
        ToTensor,
        Normalize,
    ]
    assert [type(s) for s in evaluation.steps] == [Resize, CenterCrop, ToTensor, Normalize]
    assert train.random and not evaluation.random
    out = train(rgb(40, 30), generator())
    assert out.shape == (3, 16, 16) and evaluation(rgb(40, 30)).shape == (3, 16, 16)


def test_transforms_match_torchvision_when_it_is_installed():
    tv = pytest.importorskip("torchvision.transforms")
    functional = pytest.importorskip("torchvision.transforms.functional")
    image = rgb(53, 37, seed=5)
    ours = make_transform(DataConfig(image_size=24, resize=29), train=False)
    theirs = tv.Compose(
        [
            tv.Resize(29),
            tv.CenterCrop(24),
            tv.ToTensor(),
            tv.Normalize(ours.steps[3].mean, ours.steps[3].std),
        ]
    )
    assert np.array_equal(ours(image), theirs(image).numpy())
    top, left, h, w = RandomResizedCrop(20).params(53, 37, generator())
    expected = functional.resized_crop(image, top, left, h, w, [20, 20])
    ours = RandomResizedCrop(20)(image, generator())
    assert np.array_equal(np.asarray(ours), np.asarray(expected))


# ------------------------------------------------------------------- loader


@dataclasses.dataclass(frozen=True)
class AddDraw:
    """A stand-in random transform: adds one draw from the sample's generator."""

    random: ClassVar[bool] = True

    def __call__(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return image + rng.random()


def counting_dataset(n: int, random: bool = False) -> ImageDataset:
    """Sample i is a 2x2 image of value i (plus its augmentation draw when random)."""
    images = np.arange(n, dtype=np.float32)[:, None, None] * np.ones((n, 2, 2), np.float32)
    samples = Samples(ArrayImages(images, "counting"), np.arange(n), np.arange(n) % 3)
    steps = (ToTensor(), AddDraw()) if random else (ToTensor(),)
    return ImageDataset(samples, ["a", "b", "c"], Compose(steps))


def test_loader_batches_shapes_and_length():
    loader = DataLoader(counting_dataset(10), batch_size=4)
    batches = list(loader)
    assert len(loader) == 3 and [len(b[1]) for b in batches] == [4, 4, 2]
    images, labels = batches[0]
    assert images.shape == (4, 3, 2, 2) and images.dtype == np.float32
    assert labels.dtype == np.int64 and labels.tolist() == [0, 1, 2, 0]
    dropping = DataLoader(counting_dataset(10), batch_size=4, drop_last=True)
    assert len(dropping) == 2 and [len(b[1]) for b in dropping] == [4, 4]


def order(loader: DataLoader) -> list[int]:
    return [int(v) for images, _ in loader for v in np.floor(images[:, 0, 0, 0])]


def test_shuffling_is_a_seeded_permutation_per_epoch():
    loader = DataLoader(counting_dataset(50), batch_size=8, shuffle=True, seed=1)
    first = order(loader)
    assert sorted(first) == list(range(50)) and first != list(range(50))
    assert order(loader) == first
    loader.set_epoch(1)
    second = order(loader)
    assert second != first and sorted(second) == list(range(50))
    assert order(DataLoader(counting_dataset(50), batch_size=8, shuffle=True, seed=2)) != first


def test_threaded_loading_gives_the_same_batches():
    dataset = counting_dataset(37, random=True)
    plain = DataLoader(dataset, batch_size=5, shuffle=True, seed=3, num_workers=0)
    threaded = DataLoader(dataset, batch_size=5, shuffle=True, seed=3, num_workers=3)
    for (a, la), (b, lb) in zip(plain, threaded, strict=True):
        assert np.array_equal(a, b) and np.array_equal(la, lb)


def test_augmentation_depends_on_seed_epoch_and_index_not_batching():
    dataset = counting_dataset(12, random=True)

    def draws(batch_size: int, epoch: int) -> dict[int, float]:
        loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, seed=0)
        loader.set_epoch(epoch)
        return {int(np.floor(v)): float(v) for images, _ in loader for v in images[:, 0, 0, 0]}

    assert draws(5, epoch=0) == draws(3, epoch=0) != draws(5, epoch=1)


def test_resuming_inside_an_epoch_replays_its_remaining_batches():
    loader = DataLoader(counting_dataset(30, random=True), batch_size=4, shuffle=True, seed=5)
    loader.set_epoch(2)
    full = list(loader)
    loader.set_epoch(2, start_batch=3)
    rest = list(loader)
    assert len(rest) == len(full) - 3
    assert all(np.array_equal(a[0], b[0]) for a, b in zip(full[3:], rest, strict=True))


def test_random_datasets_need_a_generator():
    dataset = counting_dataset(3, random=True)
    assert not dataset.deterministic and counting_dataset(3).deterministic
    with pytest.raises(ValueError, match="pass a numpy Generator"):
        dataset[0]
    image, label = dataset.get(0, generator())
    assert image.shape == (3, 2, 2) and label == 0


def test_truncated_image_is_unreadable(tmp_path):
    buffer = io.BytesIO()
    rgb(64, 64).save(buffer, format="PNG")
    make_folder(tmp_path, {"a": ["ok.png"]})
    (tmp_path / "a" / "cut.png").write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    train, _, _ = imagefolder_splits(tmp_path)
    dataset = ImageDataset(train, ["a"], make_transform(SMALL, train=False), "skip")
    assert [dataset[i] is None for i in range(2)] == [True, False]
