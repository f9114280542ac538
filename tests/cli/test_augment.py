"""data.augment: the config's list form (and the older mapping), the augmentations against
torchvision's outputs, their random sampling, and MixUp/CutMix.

The goldens (tests/fixtures/augment_goldens.*) were written by torchvision 0.29 through
tests/fixtures/make_augment_goldens.py; torchvision is not needed here. They pin the
deterministic part of each transform given the parameters torchvision drew; the sampling
of those parameters is tested for its distribution and its determinism.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from numpy.random import default_rng as generator
from PIL import Image

import cli.data.augment as augment_module
from cli.config import (
    ColorJitterOptions,
    Config,
    CutmixOptions,
    DataConfig,
    HorizontalFlipOptions,
    MixupOptions,
    RandAugmentOptions,
    RandomErasingOptions,
    RandomResizedCropOptions,
    TrivialAugmentOptions,
    config_to_dict,
    load_config,
)
from cli.data.augment import (
    ADJUST,
    ColorJitter,
    RandAugment,
    RandomErasing,
    TrivialAugmentWide,
    erase,
    jitter,
    rand_augment_space,
    trivial_augment_space,
)
from cli.data.image_ops import apply_op
from cli.data.mixing import BatchMixing, cutmix, cutmix_box, mix, mixes_batches, one_hot, paste
from cli.data.transforms import (
    CenterCrop,
    Normalize,
    RandomHorizontalFlip,
    RandomResizedCrop,
    Resize,
    ToTensor,
    make_transform,
    resized_crop,
)
from cli.errors import ConfigError
from tests.cli.test_train_e2e import assert_identical, finetune, rows, weights, write_config

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
CASES = json.loads((FIXTURES / "augment_goldens.json").read_text())
GOLDEN = dict(np.load(FIXTURES / "augment_goldens.npz"))
IMAGE = Image.fromarray(GOLDEN["image"])


def golden(key: str) -> np.ndarray:
    return GOLDEN[key]


def ids(cases: list[dict], *fields: str) -> list[str]:
    return ["-".join(str(case[f]) for f in fields) for case in cases]


# ------------------------------------------------------------------- config


def augment_of(tmp_path: Path, text: str, overrides: list[str] = ()) -> tuple:
    path = tmp_path / "run.yaml"
    path.write_text(text)
    return load_config(path, overrides).data.augment


def test_the_list_form_takes_names_and_options(tmp_path):
    text = """
data:
  augment:
    - random_resized_crop: {scale: [0.5, 1]}
    - horizontal_flip
    - color_jitter: {brightness: 0.4, hue: 0.1}
    - trivial_augment:
    - {random_erasing: {p: 0.25}}
    - mixup: {alpha: 0.2}
    - cutmix
"""
    assert augment_of(tmp_path, text) == (
        RandomResizedCropOptions(scale=(0.5, 1.0)),
        HorizontalFlipOptions(p=0.5),
        ColorJitterOptions(brightness=0.4, hue=0.1),
        TrivialAugmentOptions(),
        RandomErasingOptions(p=0.25),
        MixupOptions(alpha=0.2),
        CutmixOptions(),
    )


def test_a_name_alone_takes_torchvisions_defaults_and_overrides_parse(tmp_path):
    found = augment_of(tmp_path, "", ["data.augment=[horizontal_flip, color_jitter]"])
    assert found == (HorizontalFlipOptions(p=0.5), ColorJitterOptions(0.0, 0.0, 0.0, 0.0))
    found = augment_of(tmp_path, "", ["data.augment=[{rand_augment: {num_ops: 3}}]"])
    assert found == (RandAugmentOptions(num_ops=3, magnitude=9, num_magnitude_bins=31),)
    assert augment_of(tmp_path, "data: {augment: mixup}") == (MixupOptions(1.0, 1.0),)


def test_the_older_mapping_form_still_works(tmp_path):
    old = "data: {augment: {random_resized_crop: true, scale: [0.5, 1], hflip: true}}"
    assert augment_of(tmp_path, old) == (
        RandomResizedCropOptions(scale=(0.5, 1.0)),
        HorizontalFlipOptions(),
    )
    assert augment_of(tmp_path, "data: {augment: {hflip: false}}") == ()
    assert augment_of(tmp_path, "data: {augment: }") == ()
    assert augment_of(tmp_path, "", ["data.augment.hflip=true"]) == (HorizontalFlipOptions(),)


def test_the_resolved_config_round_trips_through_plain_data():
    config = Config(data=DataConfig(augment=(ColorJitterOptions(0.2), MixupOptions(0.4, 0.5))))
    plain = config_to_dict(config)
    assert plain["data"]["augment"][1] == {"mixup": {"alpha": 0.4, "p": 0.5}}
    assert Config.from_dict(plain) == config


def test_every_augment_problem_is_reported_at_once_with_suggestions(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(
        "data:\n  augment:\n"
        "    - horizontl_flip\n"
        "    - color_jitter: {brightnes: 0.4, hue: 0.7}\n"
        "    - rand_augment: {magnitude: 31}\n"
        "    - random_erasing: {scale: [0.5, 0.1]}\n"
        "    - 3\n"
    )
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    found = caught.value.problems
    assert len(found) == 6, found
    assert f"{path}: data.augment[0]: unknown 'horizontl_flip'" in found[0]
    assert found[0].endswith("did you mean 'horizontal_flip'?")
    assert (
        f"{path}: data.augment[1].color_jitter.brightnes: unknown key; did you mean 'brightness'?"
        in found
    )
    assert f"{path}: data.augment[1].color_jitter.hue: must be >= 0 and <= 0.5, got 0.7" in found
    assert (
        f"{path}: data.augment[2].rand_augment.magnitude: must be less than "
        "num_magnitude_bins (31), got 31"
    ) in found
    assert (
        f"{path}: data.augment[3].random_erasing.scale: expected [min, max], got [0.5, 0.1]"
        in found
    )
    assert (
        f"{path}: data.augment[4]: expected a name or {{name: {{option: value}}}}, got 3" in found
    )


def test_a_transform_listed_twice_is_refused(tmp_path):
    path = tmp_path / "twice.yaml"
    path.write_text("data: {augment: [horizontal_flip, mixup, {horizontal_flip: {p: 1}}]}")
    with pytest.raises(ConfigError, match="data.augment: listed more than once: horizontal_flip"):
        load_config(path)


# ------------------------------------------------------------ the pipeline


def test_make_transform_orders_crop_image_steps_tensor_then_erasing():
    augment = (
        HorizontalFlipOptions(p=0.3),
        TrivialAugmentOptions(),
        RandomErasingOptions(),
        MixupOptions(),
    )
    cfg = DataConfig(image_size=16, resize=20, augment=augment)
    train = make_transform(cfg, train=True)
    assert [type(s) for s in train.steps] == [
        Resize,
        CenterCrop,
        RandomHorizontalFlip,
        TrivialAugmentWide,
        ToTensor,
        Normalize,
        RandomErasing,
    ]
    assert train.steps[2].p == 0.3
    crop = DataConfig(image_size=16, augment=(ColorJitterOptions(0.1), RandomResizedCropOptions()))
    steps = make_transform(crop, train=True).steps
    assert [type(s) for s in steps[:2]] == [ColorJitter, RandomResizedCrop]
    assert [type(s) for s in make_transform(cfg, train=False).steps] == [
        Resize,
        CenterCrop,
        ToTensor,
        Normalize,
    ]


def test_the_older_form_builds_the_same_transform_as_before(tmp_path):
    path = tmp_path / "old.yaml"
    path.write_text("data: {image_size: 16, augment: {random_resized_crop: true, hflip: true}}")
    transform = make_transform(load_config(path).data, train=True)
    # the repr is part of the data identity a resume and the feature cache compare
    assert repr(transform.steps[:2]) == (
        "(RandomResizedCrop(size=16, scale=(0.08, 1.0), ratio=(0.75, 1.3333333333333333)), "
        "RandomHorizontalFlip(p=0.5))"
    )


@pytest.mark.parametrize(
    "step",
    [
        ColorJitterOptions(0.4, 0.4, 0.4, 0.1),
        TrivialAugmentOptions(),
        RandAugmentOptions(num_ops=4),
        RandomErasingOptions(p=1.0),
    ],
    ids=lambda s: s.name,
)
def test_each_transform_is_a_function_of_the_generator_on_rgb_and_float_images(step):
    cfg = DataConfig(image_size=12, resize=14, mean=(0.5,) * 3, std=(0.5,) * 3, augment=(step,))
    transform = make_transform(cfg, train=True)
    digits = Image.fromarray(np.random.default_rng(1).random((8, 8), dtype=np.float32))
    for image in (IMAGE, digits):
        outs = [transform(image, generator(seed)) for seed in (0, 0, 1, 2, 3)]
        assert all(out.shape == (3, 12, 12) and out.dtype == np.float32 for out in outs)
        assert np.array_equal(outs[0], outs[1])
        assert any(not np.array_equal(outs[0], out) for out in outs[2:])


# --------------------------------------------------------- torchvision goldens


def test_goldens_were_made_with_this_pillow():
    import PIL

    made = CASES["versions"]["pillow"].split(".")[0]
    assert PIL.__version__.split(".")[0] == made, "regenerate the goldens with this Pillow"


@pytest.mark.parametrize(
    "case", CASES["ops"], ids=ids(CASES["ops"], "op", "magnitude", "interpolation")
)
def test_each_op_matches_torchvision(case):
    out = apply_op(IMAGE, case["op"], case["magnitude"], case["interpolation"])
    assert np.array_equal(np.asarray(out), golden(case["key"]))


@pytest.mark.parametrize("case", CASES["jitter"], ids=ids(CASES["jitter"], "adjust", "factor"))
def test_color_adjustments_match_torchvision(case):
    names = ["brightness", "contrast", "saturation", "hue"]
    out = ADJUST[names.index(case["adjust"])](IMAGE, case["factor"])
    assert np.array_equal(np.asarray(out), golden(case["key"]))


def test_color_jitter_with_torchvisions_draws_matches():
    for run in CASES["color_jitter"]:
        out = jitter(IMAGE, run["order"], run["factors"])
        assert np.array_equal(np.asarray(out), golden(run["key"])), run


def test_trivial_augment_and_rand_augment_runs_match():
    """Seeded torchvision calls, replayed from the (op, magnitude) pairs they applied."""
    for run in CASES["recorded"]:
        image = IMAGE
        for op, magnitude in run["ops"]:
            image = apply_op(image, op, magnitude, "nearest")
        assert np.array_equal(np.asarray(image), golden(run["key"])), run


@pytest.mark.parametrize("name", sorted(CASES["tables"]))
def test_magnitude_tables_are_torchvisions(name):
    kind, bins, *size = name.split("/")
    if kind == "trivial_augment":
        ours = trivial_augment_space(int(bins))
    else:
        height, width = map(int, size[0].split("x"))
        ours = rand_augment_space(int(bins), height, width)
    theirs = CASES["tables"][name]
    assert list(ours) == list(theirs)
    for op, (magnitudes, signed) in ours.items():
        expected, expected_signed = theirs[op]
        assert signed == expected_signed
        if magnitudes is None:
            assert expected == 0.0
        else:
            np.testing.assert_array_equal(magnitudes, np.asarray(expected, magnitudes.dtype))


def test_erasing_and_resized_crop_match_torchvision():
    for case in CASES["erase"]:
        box = (case["top"], case["left"], case["height"], case["width"])
        out = erase(golden("erase_input"), *box, case["value"])
        assert np.array_equal(out, golden(case["key"]))
    case = CASES["resized_crop"]
    box = (case["top"], case["left"], case["height"], case["width"])
    out = resized_crop(IMAGE, *box, case["size"])
    assert np.array_equal(np.asarray(out), golden(case["key"]))


def test_mixup_and_cutmix_match_torchvision():
    batch, mixing = golden("mix_input"), CASES["mixing"]
    targets = one_hot(np.array(mixing["labels"]), mixing["num_classes"])
    for run in mixing["mixup"]:
        assert np.array_equal(mix(batch, run["lam"]), golden(run["key"]))
        assert np.array_equal(mix(targets, run["lam"]), golden(run["key"] + "_targets"))
    for run in mixing["cutmix"]:
        box, kept = cutmix_box(run["lam"], tuple(run["center"]), *batch.shape[-2:])
        assert list(box) == run["box"] and kept == run["lam_adjusted"]
        assert np.array_equal(paste(batch, box), golden(run["key"]))
        assert np.array_equal(mix(targets, kept), golden(run["key"] + "_targets"))


# ---------------------------------------------------------------- sampling


def test_color_jitter_draws_an_order_and_factors_in_range():
    transform = ColorJitter(brightness=0.5, contrast=0.0, saturation=2.0, hue=0.2)
    for seed in range(200):
        order, (b, c, s, h) = transform.params(generator(seed))
        assert sorted(order) == [0, 1, 2, 3] and c is None
        assert 0.5 <= b <= 1.5 and 0.0 <= s <= 3.0 and -0.2 <= h <= 0.2
    orders = {tuple(transform.params(generator(seed))[0]) for seed in range(200)}
    assert len(orders) > 20  # of the 24 permutations


def recorded_ops(monkeypatch, transform, seeds: range) -> list[list[tuple[str, float]]]:
    """The (op, magnitude) pairs `transform` applies for each seed."""
    calls: list[tuple[str, float]] = []

    def record(image, op, magnitude, interpolation):
        calls.append((op, magnitude))
        return image

    monkeypatch.setattr(augment_module, "apply_op", record)
    runs = []
    for seed in seeds:
        calls.clear()
        transform(IMAGE, generator(seed))
        runs.append(list(calls))
    return runs


def test_trivial_augment_draws_ops_bins_and_signs_uniformly(monkeypatch):
    runs = recorded_ops(monkeypatch, TrivialAugmentWide(), range(2800))
    assert all(len(run) == 1 for run in runs)
    space = trivial_augment_space(31)
    counts = {op: sum(run[0][0] == op for run in runs) for op in space}
    assert all(140 < n < 260 for n in counts.values()), counts  # 200 expected each
    rotations = [m for ((op, m),) in runs if op == "Rotate"]
    assert set(np.abs(rotations)) <= set(space["Rotate"][0].tolist())
    assert 0.3 < np.mean(np.array(rotations) < 0) < 0.7
    assert all(m == 0.0 for ((op, m),) in runs if op in ("Identity", "Equalize"))
    assert all(m > 0 for ((op, m),) in runs if op == "Posterize")


def test_rand_augment_applies_num_ops_at_the_chosen_magnitude(monkeypatch):
    runs = recorded_ops(monkeypatch, RandAugment(num_ops=3, magnitude=5), range(300))
    assert all(len(run) == 3 for run in runs)
    width, height = IMAGE.size
    space = rand_augment_space(31, height, width)
    for op, magnitude in (call for run in runs for call in run):
        table = space[op][0]
        assert abs(magnitude) == (0.0 if table is None else float(table[5]))
    assert len({op for run in runs for op, _ in run}) == 14


def test_random_erasing_probability_bounds_and_fallback():
    array = np.ones((3, 20, 30), np.float32)
    transform = RandomErasing(p=0.5, value=-2.0)
    erased = [transform(array, generator(seed)) for seed in range(400)]
    changed = [out for out in erased if out is not array]
    assert 150 < len(changed) < 250 and all(out.shape == array.shape for out in changed)
    for out in changed:
        area = (out[0] == -2.0).sum()
        assert 0.02 * 600 * 0.5 <= area <= 0.33 * 600 * 1.5
        assert np.array_equal(out[0] == -2.0, out[2] == -2.0)
    assert np.array_equal(transform(array, generator(7)), transform(array, generator(7)))
    never_fits = RandomErasing(p=1.0, scale=(1.0, 1.0), ratio=(1.0, 1.0))
    assert never_fits(array, generator(0)) is array  # h and w must be smaller than the image


def test_batch_mixing_derives_from_seed_epoch_and_batch():
    images = np.random.default_rng(0).random((6, 3, 8, 8), dtype=np.float32)
    labels = np.array([0, 1, 2, 0, 1, 2])
    augment = (MixupOptions(alpha=0.4), CutmixOptions())
    mixing = BatchMixing.from_config(augment, num_classes=3, seed=5)
    first = mixing(images, labels, epoch=1, batch=2)
    again = mixing(images, labels, epoch=1, batch=2)
    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))
    others = [mixing(images, labels, 1, 3), mixing(images, labels, 2, 2)]
    assert all(not np.array_equal(first[0], other[0]) for other in others)
    for batch in range(40):
        mixed, targets = mixing(images, labels, 0, batch)
        assert targets.shape == (6, 3) and targets.dtype == np.float32
        np.testing.assert_allclose(targets.sum(axis=1), 1.0, rtol=1e-6)
        assert mixed.shape == images.shape and mixed.dtype == np.float32


def test_mixup_and_cutmix_are_each_chosen_and_p_is_honoured():
    images = np.random.default_rng(0).random((4, 3, 8, 8), dtype=np.float32)
    labels = np.array([0, 1, 0, 1])
    both = BatchMixing.from_config((MixupOptions(), CutmixOptions()), 2, seed=0)
    kinds = set()
    for batch in range(30):
        mixed, _ = both(images, labels, 0, batch)
        pasted = np.isclose(mixed, images) | np.isclose(mixed, np.roll(images, 1, axis=0))
        kinds.add("cutmix" if pasted.all() else "mixup")
    assert kinds == {"mixup", "cutmix"}
    never = BatchMixing.from_config((MixupOptions(p=0.0),), 2, seed=0)
    mixed, targets = never(images, labels, 0, 0)
    assert mixed is images and np.array_equal(targets, one_hot(labels, 2))
    none = BatchMixing.from_config((HorizontalFlipOptions(),), 2, seed=0)
    assert none(images, labels, 0, 0) == (images, labels)
    assert mixes_batches((CutmixOptions(),)) and not mixes_batches((HorizontalFlipOptions(),))


def test_cutmix_box_stays_inside_and_its_area_sets_the_targets():
    images = np.zeros((2, 1, 10, 12), np.float32)
    images[1] = 1.0
    targets = one_hot(np.array([0, 1]), 2)
    for seed in range(50):
        lam = generator(seed).beta(1.0, 1.0)
        mixed, mixed_targets = cutmix(images, targets, lam, generator(seed))
        pasted = mixed[0].mean()  # image 0 holds image 1's pixels inside the box
        np.testing.assert_allclose(mixed_targets[0], [1 - pasted, pasted], rtol=1e-6)


# -------------------------------------------------------------- end to end

EVERYTHING = [
    {"random_resized_crop": {"scale": [0.5, 1]}},
    "horizontal_flip",
    {"color_jitter": {"brightness": 0.3, "saturation": 0.3}},
    "trivial_augment",
    {"rand_augment": {"num_ops": 1}},
    "random_erasing",
    {"mixup": {"alpha": 0.4}},
    {"cutmix": {"p": 0.5}},
]


@pytest.mark.slow
def test_a_run_with_every_augmentation_resumes_bit_for_bit(tmp_path):
    config = write_config(tmp_path, "aug.yaml", data={"augment": EVERYTHING, "limit": 8})
    straight = finetune("train", str(config), "run.output_dir=straight", cwd=tmp_path)
    assert straight.returncode == 0, straight.stderr
    first = finetune(
        "train", str(config), "schedule.epochs=1", "run.output_dir=first", cwd=tmp_path
    )
    assert first.returncode == 0, first.stderr
    resumed = finetune("train", "--resume", "first", "schedule.epochs=2", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert_identical(
        weights(tmp_path / "first/last.safetensors"),
        weights(tmp_path / "straight/last.safetensors"),
    )
    epochs = [row for row in rows(tmp_path / "straight") if "step" not in row]
    assert len(epochs) == 2 and all(0 <= row["train_acc"] <= 1 for row in epochs)
    saved = load_config(tmp_path / "straight/config.yaml").data.augment
    assert [step.name for step in saved] == [
        next(iter(s)) if isinstance(s, dict) else s for s in EVERYTHING
    ]


@pytest.mark.slow
def test_mixing_turns_off_the_feature_cache(tmp_path):
    config = write_config(
        tmp_path,
        "probe.yaml",
        model={"freeze": ["*"], "unfreeze": ["fc.*"], "bn": "eval"},
        data={"augment": ["mixup"], "limit": 8},
        schedule={"epochs": 1},
    )
    done = finetune("train", str(config), "run.output_dir=probe", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "Training" in done.stdout and "features" not in done.stdout
    assert not (tmp_path / "probe/features").exists()
