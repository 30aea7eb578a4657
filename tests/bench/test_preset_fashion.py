"""The ``fashion-effnet`` preset: Fashion-MNIST loaders, the EfficientNet-Lite0 weights, the teacher cache
and the narrowed EfficientNet student. Tests marked ``assets`` read the real files installed by
``make assets``; they fine-tune at most 2 steps on a few images."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from inhernet_bench.baselines.methods import DEFAULT_METHODS
from inhernet_bench.baselines.students import effnet_student
from inhernet_bench.presets import fashion
from inhernet_bench.presets.assets import AssetMissingError
from inhernet_bench.presets.fashion import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    effnet_input,
    fashion_calib,
    fashion_dataset,
    fashion_effnet_teacher,
    fashion_loaders,
    read_fashion_mnist,
    teacher_dir,
)
from inhernet_bench.presets.registry import get_preset

# a tiny recipe: a few steps on 40 images (10 of them for validation), tested on 1 test image per class
TINY = dict(batch_size=4, train_limit=40, val_examples=10, warmup_steps=1, eval_every=2, patience=1, max_steps=4,
            test_per_class=1)


def _params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_effnet_input_normalises_with_imagenet_statistics() -> None:
    images = torch.tensor([0, 255], dtype=torch.uint8).view(2, 1, 1).expand(2, 28, 28)
    x = effnet_input(images, size=32)
    assert x.shape == (2, 3, 32, 32) and x.dtype == torch.float32 and x.is_contiguous()
    mean, std = torch.tensor(IMAGENET_MEAN), torch.tensor(IMAGENET_STD)
    # a constant image stays constant through the resize; grey goes to every channel, then (x - mean) / std
    torch.testing.assert_close(x[0], (-mean / std).view(3, 1, 1).expand(3, 32, 32))
    torch.testing.assert_close(x[1], ((1 - mean) / std).view(3, 1, 1).expand(3, 32, 32))
    assert effnet_input(images, size=28).shape == (2, 3, 28, 28)


def test_missing_fashion_mnist_names_the_install_step(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INHERNET_FASHION_MNIST", str(tmp_path))
    for load in (lambda: fashion_dataset("train"), lambda: fashion_loaders(), lambda: fashion_calib(10)):
        with pytest.raises(AssetMissingError, match=r"make assets.*fashion") as err:
            load()
        assert str(tmp_path) in str(err.value)


def test_bad_arguments_are_rejected() -> None:
    with pytest.raises(ValueError, match="split"):
        read_fashion_mnist("val")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="per_class"):
        fashion_dataset("test", per_class=0)
    with pytest.raises(ValueError, match="n must be"):
        fashion_calib(0)


def test_effnet_student_is_the_narrowest_lite0_reaching_the_target() -> None:
    from timm.models.efficientnet import _gen_efficientnet_lite

    reference = _gen_efficientnet_lite("efficientnet_lite0", channel_multiplier=0.25, num_classes=10)
    target = _params(reference)
    student = effnet_student(target - 100)
    assert target - 100 <= _params(student) <= target  # no wider than the multiplier that first reaches it
    assert student.conv_stem.out_channels == 32 and student.conv_head.out_channels == 1280  # fixed, as in Lite
    assert student.blocks[-1][-1].conv_pwl.out_channels < 320
    assert student(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_preset_is_registered() -> None:
    preset = get_preset("fashion-effnet")
    assert preset.metric == "accuracy" and preset.methods == DEFAULT_METHODS and preset.cache_teacher
    assert preset.student is not None


@pytest.mark.assets
def test_weights_map_key_by_key_onto_timm() -> None:
    state = torch.load(fashion.effnet_lite0_weights_path(), map_location="cpu", weights_only=True)
    model = fashion.load_effnet_lite0_imagenet(num_classes=1000)
    mine = model.state_dict()
    assert len(state) == len(mine)
    for (src, value), (dst, got) in zip(state.items(), mine.items(), strict=True):
        assert torch.equal(value, got), f"{src} -> {dst}"
    head = fashion.load_effnet_lite0_imagenet(num_classes=10).state_dict()
    assert head["classifier.weight"].shape == (10, 1280)
    assert all(torch.equal(head[k], mine[k]) for k in mine if not k.startswith("classifier."))


@pytest.mark.assets
def test_a_seeded_head_is_the_same_whatever_ran_before() -> None:
    """The teacher's fresh classifier comes from the recipe's seed, not from the global RNG (which whatever ran
    earlier in the process has moved), and leaves the global RNG where it was."""
    first = fashion.load_effnet_lite0_imagenet(num_classes=10, seed=0).classifier.weight
    torch.randn(100)
    state = torch.get_rng_state()
    again = fashion.load_effnet_lite0_imagenet(num_classes=10, seed=0).classifier.weight
    assert torch.equal(first, again) and torch.equal(torch.get_rng_state(), state)
    assert not torch.equal(first, fashion.load_effnet_lite0_imagenet(num_classes=10, seed=1).classifier.weight)


@pytest.mark.assets
def test_loaders_are_deterministic_and_class_balanced() -> None:
    test = fashion_dataset("test", per_class=3)
    images, labels = test.tensors
    assert images.shape == (30, 3, fashion.INPUT_SIZE, fashion.INPUT_SIZE) and labels.dtype == torch.int64
    assert torch.bincount(labels, minlength=10).tolist() == [3] * 10
    raw_images, raw_labels = read_fashion_mnist("test")
    kept = sorted(i for c in range(10) for i in (raw_labels == c).nonzero().flatten()[:3].tolist())
    assert torch.equal(labels, raw_labels[kept])  # file order, first 3 per class
    torch.testing.assert_close(images, effnet_input(raw_images[kept], fashion.INPUT_SIZE))

    train_a, test_loader = fashion_loaders(batch_size=8, train_limit=40, test_per_class=2, seed=1)
    train_b, _ = fashion_loaders(batch_size=8, train_limit=40, test_per_class=2, seed=1)
    train_c, _ = fashion_loaders(batch_size=8, train_limit=40, test_per_class=2, seed=2)
    (xa, ya), (xb, yb), (xc, _) = next(iter(train_a)), next(iter(train_b)), next(iter(train_c))
    assert xa.shape == (8, 3, fashion.INPUT_SIZE, fashion.INPUT_SIZE) and torch.equal(xa, xb) and torch.equal(ya, yb)
    assert not torch.equal(xa, xc)  # the seed fixes the order
    assert len(train_a.dataset) == 40 and len(test_loader.dataset) == 20
    assert [len(y) for _, y in test_loader] == [20]  # one evaluation batch, never shuffled

    calib = fashion_calib(12, batch_size=5)
    assert [len(b) for b in calib] == [5, 5, 2]
    torch.testing.assert_close(torch.cat(calib), fashion_dataset("train", limit=12).tensors[0])


@pytest.mark.assets
def test_teacher_is_built_by_the_converging_builder_then_loaded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from inhernet_bench.presets.teacher_cache import TeacherMissingError, build_teacher

    monkeypatch.setenv("INHERNET_HOME", str(tmp_path))
    with pytest.raises(TeacherMissingError, match="inhernet-bench teacher --preset fashion-effnet"):
        fashion_effnet_teacher()
    spec = fashion.teacher_spec(**TINY)
    assert spec.name != fashion.teacher_spec().name  # another recipe, another cache
    train, val, test = spec.splits(spec.model())
    fit_labels = train.dataset.tensors[1][train.indices]
    assert len(train) + len(val.dataset) == 40 and not set(train.indices) & set(val.dataset.indices)
    assert len(test.dataset) == 10 and torch.bincount(fit_labels, minlength=10).min() >= 1
    record = build_teacher(spec, log=lambda _: None)
    assert record["recipe"] == {**fashion.TEACHER_RECIPE, **TINY} and record["test"]["count"] == 10
    monkeypatch.setattr(fashion, "TEACHER_RECIPE", {**fashion.TEACHER_RECIPE, **TINY})
    teacher = fashion_effnet_teacher()
    assert not teacher.training and teacher.conv_stem.weight.is_contiguous(memory_format=torch.channels_last)
    assert sorted(p.name for p in teacher_dir().iterdir()) == ["meta.json", "model.safetensors"]  # no state left
    # ImageNet start point: training changed the backbone, and the cache kept the change
    base = fashion.load_effnet_lite0_imagenet(num_classes=10)
    assert not torch.equal(base.conv_stem.weight, teacher.conv_stem.weight)
    with pytest.raises(TypeError, match=r"unknown teacher recipe keys.*'stpes'"):
        fashion.teacher_spec(stpes=3)
