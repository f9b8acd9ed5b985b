"""Loading the user's model and data: weight files, torchvision models, image folders."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest
import torch
from helpers import parse, tiny, write_images
from safetensors.torch import save_file

from iterprune.engine import sources
from iterprune.errors import ScheduleError, UserError
from iterprune.schedule import parsing as schedule
from iterprune.schedule.specs import ImageFolderSpec, ModelSpec


def mlp_spec(weights: str | None = None, trust: bool = False) -> ModelSpec:
    return ModelSpec(
        builtin="digits_mlp", kwargs={"hidden": 8}, weights=weights, trust_pickle=trust
    )


def trained_state() -> dict[str, torch.Tensor]:
    torch.manual_seed(1)
    return sources.build_model(mlp_spec(), seed=99).state_dict()


def assert_loaded(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    for k, v in state.items():
        assert torch.equal(model.state_dict()[k], v), k


@pytest.mark.parametrize("wrap", ["plain", "state_dict_key", "dataparallel_prefix"])
def test_state_dict_files_load_without_unpickling(tmp_path: Path, wrap: str) -> None:
    state = trained_state()
    obj = {
        "plain": state,
        "state_dict_key": {"state_dict": state, "epoch": 3},
        "dataparallel_prefix": {f"module.{k}": v for k, v in state.items()},
    }[wrap]
    torch.save(obj, tmp_path / "w.pt")
    model = sources.build_model(mlp_spec("w.pt"), seed=0, base_dir=str(tmp_path))
    assert_loaded(model, state)


def test_safetensors_weights_load(tmp_path: Path) -> None:
    state = trained_state()
    save_file(state, str(tmp_path / "w.safetensors"))
    model = sources.build_model(mlp_spec("w.safetensors"), seed=0, base_dir=str(tmp_path))
    assert_loaded(model, state)


def test_a_pickled_module_is_refused_unless_trusted(tmp_path: Path) -> None:
    whole = sources.build_model(mlp_spec(), seed=99)
    torch.save(whole, tmp_path / "whole.pt")
    with pytest.raises(UserError) as err:
        sources.build_model(mlp_spec("whole.pt"), seed=0, base_dir=str(tmp_path))
    text = str(err.value)
    assert "runs arbitrary code" in text and "trust_pickle: true" in text
    assert "torch.save(m.state_dict()" in text  # how to convert it
    model = sources.build_model(mlp_spec("whole.pt", trust=True), seed=0, base_dir=str(tmp_path))
    assert_loaded(model, whole.state_dict())


def test_mismatched_weights_name_the_offending_keys(tmp_path: Path) -> None:
    state = trained_state()
    state["1.weight"] = torch.zeros(3, 3)
    del state["5.bias"]
    state["extra.weight"] = torch.zeros(1)
    torch.save(state, tmp_path / "w.pt")
    with pytest.raises(UserError) as err:
        sources.build_model(mlp_spec("w.pt"), seed=0, base_dir=str(tmp_path))
    text = str(err.value)
    assert "missing keys: 5.bias" in text and "unexpected keys: extra.weight" in text
    assert "1.weight (3, 3) vs model (8, 64)" in text


def test_torchvision_models_are_built_by_name_with_num_classes() -> None:
    model = sources.build_model(ModelSpec(torchvision="resnet18", num_classes=3), seed=0)
    assert model.fc.out_features == 3
    again = sources.build_model(ModelSpec(torchvision="resnet18", num_classes=3), seed=0)
    assert torch.equal(model.conv1.weight, again.conv1.weight)  # seeded


def test_an_image_folder_test_split_is_read_like_the_validation_one(tmp_path: Path) -> None:
    for split, n in (("train", 3), ("val", 2), ("test", 2)):
        write_images(tmp_path / split, {"cat": n, "dog": n})
    _, val, test = sources.imagefolder_loaders(
        ImageFolderSpec("train", "val", 16, test="test"), 4, 0, str(tmp_path)
    )
    assert len(test.dataset) == 4 and test.dataset.classes == val.dataset.classes
    x, _ = next(iter(test))
    assert x.shape == (4, 3, 16, 16)
    write_images(tmp_path / "odd", {"cat": 1, "fox": 1})
    with pytest.raises(UserError, match="train and test have different classes"):
        sources.imagefolder_loaders(
            ImageFolderSpec("train", "val", 16, test="odd"), 4, 0, str(tmp_path)
        )


def test_imagefolder_loaders_use_the_standard_transforms(tmp_path: Path) -> None:
    write_images(tmp_path / "train", {"cat": 3, "dog": 3})
    write_images(tmp_path / "val", {"cat": 2, "dog": 2})
    train, val, test = sources.imagefolder_loaders(
        ImageFolderSpec("train", "val", 16), 4, 0, str(tmp_path)
    )
    x, y = next(iter(train))
    assert x.shape == (4, 3, 16, 16) and y.dtype == torch.long
    assert len(val.dataset) == 4 and val.dataset.classes == ["cat", "dog"]
    assert abs(float(x.mean())) < 2  # normalised


@pytest.mark.parametrize(
    "case, message",
    [
        ("empty", "holds no usable images"),
        ("no_images", "holds no usable images"),
        ("classes_differ", "only in train: ['dog']; only in val: ['fox']"),
    ],
)
def test_imagefolder_problems_are_clear_errors(tmp_path: Path, case: str, message: str) -> None:
    write_images(tmp_path / "val", {"cat": 1, "fox": 1} if case == "classes_differ" else {"cat": 1})
    train = tmp_path / "train"
    if case == "empty":
        train.mkdir()
    elif case == "no_images":
        (train / "cat").mkdir(parents=True)
        (train / "cat" / "notes.txt").write_text("not an image")
    else:
        write_images(train, {"cat": 1, "dog": 1})
    with pytest.raises(UserError, match=message.replace("[", r"\[").replace("]", r"\]")):
        sources.imagefolder_loaders(ImageFolderSpec("train", "val", 16), 2, 0, str(tmp_path))


def test_schedule_names_missing_image_folders(tmp_path: Path) -> None:
    text = "model: {torchvision: resnet18}\ndata:\n  imagefolder: {train: a, val: b}\n"
    with pytest.raises(ScheduleError) as err:
        schedule.parse(text, "s.yaml", tmp_path)
    assert err.value.problems == [
        "data.imagefolder.train (line 3): folder not found: a",
        "data.imagefolder.val (line 3): folder not found: b",
    ]


def test_a_factory_named_by_a_module_path_of_an_older_release_still_builds() -> None:
    """Before the packages by layer, the built-in example lived at ``iterprune.examples``; a
    schedule (or a stored run) that names a factory there keeps working."""
    spec = ModelSpec(factory="iterprune.examples:digits_mlp", kwargs={"hidden": 8})
    with pytest.warns(DeprecationWarning, match="iterprune.engine.examples"):
        model = sources.build_model(spec, seed=0)
    assert isinstance(model, torch.nn.Module)
    assert sum(p.numel() for p in model.parameters()) > 0


def test_the_digits_read_from_scikit_learns_file_equal_load_digits() -> None:
    """The example reads the digits straight from the file scikit-learn ships (importing
    scikit-learn costs a second); they must be exactly what ``load_digits`` gives."""
    from sklearn.datasets import load_digits

    from iterprune.engine import examples

    images, labels = examples.digits_tensors()
    digits = load_digits()
    assert torch.equal(images, torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16)
    assert torch.equal(labels, torch.tensor(digits.target, dtype=torch.long))
    assert examples._shipped_digits() is not None  # the fast path was taken


def test_the_schedule_knows_each_builtin_models_keyword_arguments() -> None:
    """The schedule check refuses an unknown kwarg of a built-in model (it was a TypeError
    traceback when the run started); its list must be the functions' own."""
    from iterprune.schedule.inputs import BUILTIN_KWARGS

    for name, build in sources.BUILTIN_MODELS.items():
        assert BUILTIN_KWARGS[name] == tuple(inspect.signature(build).parameters), name
    with pytest.raises(ScheduleError, match=r"model.kwargs.hidden .*digits_cnn takes"):
        parse(tiny(model={"builtin": "digits_cnn", "kwargs": {"hidden": 8}}))
