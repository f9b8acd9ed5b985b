"""Build the model and the data loaders a schedule names: built-ins, torchvision, factories, files."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, RandomSampler

from iterprune.core import rng
from iterprune.engine import corpus, examples, huggingface, tasks, tinygpt
from iterprune.errors import UserError
from iterprune.schedule.factories import resolve_factory
from iterprune.schedule.specs import DataSpec, ImageFolderSpec, ModelSpec

BUILTIN_MODELS = {
    "digits_cnn": examples.digits_cnn,
    "digits_mlp": examples.digits_mlp,
    "tiny_gpt": tinygpt.tiny_gpt,
}
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
CONVERT_HINT = (
    "convert it once to a state_dict:\n"
    "  python -c \"import torch; m = torch.load('{path}', weights_only=False); "
    "torch.save(m.state_dict(), '{stem}.state_dict.pt')\"\n"
    "and point model.weights at {stem}.state_dict.pt"
)


def build_model(spec: ModelSpec, seed: int, base_dir: str = ".") -> nn.Module:
    """The schedule's model, initialised from ``seed`` (and from ``weights`` when given)."""
    kwargs = dict(spec.kwargs)
    if spec.num_classes is not None:
        kwargs["num_classes"] = spec.num_classes
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if spec.builtin:
            model = BUILTIN_MODELS[spec.builtin](**kwargs)
        elif spec.huggingface is not None:
            model = huggingface.load(spec.huggingface, base_dir)
        elif spec.torchvision:
            import torchvision

            model = torchvision.models.get_model(spec.torchvision, weights=None, **kwargs)
        else:
            model = resolve_factory(str(spec.factory), base_dir)(**kwargs)
            if not isinstance(model, nn.Module):
                raise UserError(
                    f"model.factory '{spec.factory}' returned {type(model).__name__}, "
                    "expected a torch.nn.Module"
                )
    if spec.weights:
        state = read_weights(Path(base_dir) / spec.weights, spec.trust_pickle)
        load_weights(model, state, Path(base_dir) / spec.weights)
    return model


def fresh_model(spec: ModelSpec, seed: int, base_dir: str = ".") -> nn.Module:
    """The schedule's model as ``seed`` initialises it, without its weights file (for a model
    that is about to receive a checkpoint's state, or a random-initialisation control)."""
    return build_model(dataclasses.replace(spec, weights=None), seed, base_dir)


def read_weights(path: Path, trust_pickle: bool = False) -> dict[str, torch.Tensor]:
    """A state_dict from ``.safetensors``, or from a ``.pt``/``.pth`` file loaded without pickle code.

    A whole pickled ``nn.Module`` (what ``torch.save(model)`` writes) runs arbitrary code when
    loaded, so it is read only with ``trust_pickle: true``. ``{"state_dict": ...}`` / ``{"model":
    ...}`` wrappers and DataParallel's ``module.`` prefix are unwrapped.
    """
    if not path.is_file():
        raise UserError(f"model.weights: file not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as exc:
            raise UserError(
                f"model.weights: {path} is not a readable safetensors file: {exc}"
            ) from None
    try:
        state: Any = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        if not trust_pickle:
            first = str(exc).strip().splitlines()[0][:200]
            raise UserError(
                f"model.weights: {path} is not a plain state_dict ({first}). It looks like a "
                "pickled object, such as a whole model saved with torch.save(model). Unpickling "
                "runs arbitrary code from the file, so iterprune does it only when the schedule "
                "says model.trust_pickle: true — or "
                + CONVERT_HINT.format(path=path, stem=path.with_suffix(""))
            ) from None
        state = torch.load(path, map_location="cpu", weights_only=False)  # opted in: trust_pickle
    if isinstance(state, nn.Module):
        state = state.state_dict()
    if isinstance(state, dict):
        for key in ("state_dict", "model"):
            if len(state) <= 3 and isinstance(state.get(key), dict):
                state = state[key]
                break
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(
            f"model.weights: {path} holds {type(state).__name__}, expected a state_dict"
        )
    if state and all(k.startswith("module.") for k in state):
        state = {k.removeprefix("module."): v for k, v in state.items()}
    return state


def load_weights(model: nn.Module, state: dict[str, torch.Tensor], path: Path) -> None:
    """Load ``state`` into ``model``; mismatches name the first offending keys."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [
        f"{k} {tuple(state[k].shape)} vs model {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and state[k].shape != v.shape
    ]
    problems = []
    if missing:
        problems.append(f"missing keys: {', '.join(missing[:5])}")
    if unexpected:
        problems.append(f"unexpected keys: {', '.join(unexpected[:5])}")
    if shapes:
        problems.append(f"shape mismatches: {'; '.join(shapes[:5])}")
    if problems:
        raise UserError(f"model.weights: {path} does not fit the model: " + "; ".join(problems))
    model.load_state_dict(state)


Loaders = tuple[Any, Any, Any]  # train, validation, test (None: no test split)


def build_loaders(
    spec: DataSpec, seed: int, base_dir: str = ".", pin_memory: bool = False
) -> Loaders:
    """(train, validation, test) iterables of (inputs, targets) batches; test may be None."""
    if spec.builtin == "digits":
        kwargs = {"test_fraction": spec.test_fraction, **spec.kwargs}
        loaders = examples.digits_loaders(spec.batch_size, spec.val_fraction, seed, **kwargs)
    elif spec.builtin == "python_source":
        try:
            loaders = corpus.python_source_loaders(spec.batch_size, seed, **spec.kwargs)
        except TypeError as exc:  # an unknown kwarg
            raise UserError(f"data.kwargs for python_source: {exc}") from None
    elif spec.text is not None:
        loaders = corpus.text_loaders(spec.text, spec.batch_size, seed, base_dir)
    elif spec.imagefolder is not None:
        loaders = imagefolder_loaders(
            spec.imagefolder, spec.batch_size, spec.workers, base_dir, pin_memory
        )
    else:
        loaders = _factory_loaders(spec, base_dir)
    for split, loader in zip(("validation", "test"), loaders[1:], strict=True):
        if isinstance(loader, DataLoader) and isinstance(loader.sampler, RandomSampler):
            raise UserError(
                f"the {split} loader shuffles; iterprune compares the dense and the pruned model "
                "sample by sample, so its order must stay the same: build it with shuffle=False"
            )
    return loaders


def _factory_loaders(spec: DataSpec, base_dir: str) -> Loaders:
    fn = resolve_factory(str(spec.factory), base_dir)
    try:
        result = fn(batch_size=spec.batch_size, **spec.kwargs)
    except TypeError as exc:
        raise UserError(f"data.factory '{spec.factory}' could not be called: {exc}") from None
    if not (isinstance(result, (tuple, list)) and len(result) in (2, 3)):
        raise UserError(
            f"data.factory '{spec.factory}' must return (train_loader, val_loader) or "
            f"(train_loader, val_loader, test_loader), got {type(result).__name__}"
        )
    return result[0], result[1], result[2] if len(result) == 3 else None


def imagefolder_loaders(
    spec: ImageFolderSpec,
    batch_size: int,
    workers: int,
    base_dir: str = ".",
    pin_memory: bool = False,
) -> Loaders:
    """torchvision ImageFolder loaders with the standard ImageNet-style transforms; a test
    folder, when given, is read like the validation one."""
    train_tf, eval_tf = _transforms(spec.image_size)
    train = _image_folder("train", Path(base_dir) / spec.train, train_tf)
    val = _image_folder("val", Path(base_dir) / spec.val, eval_tf)
    test = _image_folder("test", Path(base_dir) / spec.test, eval_tf) if spec.test else None
    for name, other in (("val", val), ("test", test)):
        if other is not None and train.classes != other.classes:
            only_train = sorted(set(train.classes) - set(other.classes))
            only_other = sorted(set(other.classes) - set(train.classes))
            raise UserError(
                f"data.imagefolder: train and {name} have different classes (only in train: "
                f"{only_train[:5] or 'none'}; only in {name}: {only_other[:5] or 'none'})"
            )
    common = {"batch_size": batch_size, "num_workers": workers, "pin_memory": pin_memory}
    train_loader = DataLoader(
        train, shuffle=True, generator=torch.Generator(), persistent_workers=False, **common
    )
    test_loader = DataLoader(test, shuffle=False, **common) if test is not None else None
    return train_loader, DataLoader(val, shuffle=False, **common), test_loader


def _transforms(size: int) -> tuple[Any, Any]:
    """(train, evaluation) transforms: random resized crop and flip; resize and centre crop."""
    from torchvision import transforms

    normalize = transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)
    train = [transforms.RandomResizedCrop(size), transforms.RandomHorizontalFlip()]
    evaluation = [transforms.Resize(round(size * 256 / 224)), transforms.CenterCrop(size)]
    return (
        transforms.Compose([*train, transforms.ToTensor(), normalize]),
        transforms.Compose([*evaluation, transforms.ToTensor(), normalize]),
    )


def _image_folder(split: str, root: Path, transform: Any) -> Any:
    from torchvision import datasets

    if not root.is_dir():
        raise UserError(f"data.imagefolder.{split}: folder not found: {root}")
    try:
        return datasets.ImageFolder(str(root), transform=transform)
    except (FileNotFoundError, RuntimeError) as exc:
        raise UserError(
            f"data.imagefolder.{split}: {root} holds no usable images ({exc}); expected one "
            "sub-folder per class with .jpg/.png/... files inside"
        ) from None


def example_input(loader: Any, device: torch.device) -> torch.Tensor:
    """One training example (a batch of one), taken without moving any random generator the run
    uses: to trace a model's dependency graph."""
    with rng.untouched(loader):
        x, _ = tasks.split(next(iter(loader)))
    if not isinstance(x, torch.Tensor):
        raise UserError(
            "channel mode traces the model with one example, and needs batches whose inputs "
            f"are a single tensor (these are {type(x).__name__}); use an unstructured method"
        )
    return x[:1].to(device)
