"""The schedule reference (the documentation's page is generated from it) cannot drift from the
validator or the specs."""

from __future__ import annotations

import dataclasses
import typing

import pytest

from iterprune.schedule import checker, keys, parsing, reference
from iterprune.schedule.specs import Schedule

# Every section, with every sub-mapping the validator only reads when it is there.
FULL = """
name: x
seed: 0
device: cpu
threads: 1
model: {builtin: digits_cnn, kwargs: {}, huggingface: {path: hf, class: causal_lm}}
data: {builtin: digits, imagefolder: {train: a, val: b}, text: {train: a}, batch_size: 8}
pretrain: {epochs: 1}
prune: {method: wanda, calibration: {batches: 2}, pattern: "2:4", strict: true}
finetune: {epochs: 1, distill: {weight: 0.5}}
validate: {max_drop: 1.0}
rollback: {retries: 1}
checkpoints: {keep: last}
when: {window: "* * * * *"}
benchmark: {batch_size: 1}
lottery: {rewind: {epoch: 1}, control: {kind: random_reinit, seeds: 2}}
report: {tensorboard: tb, mlflow: {experiment: e}}
"""


def accepted_keys(monkeypatch: pytest.MonkeyPatch) -> set[str]:
    """Every key the validator allows somewhere, as it checks a schedule with every section."""
    seen: set[str] = set()
    allow = checker.Checker.unknown_keys

    def record(self, raw: dict, allowed: tuple[str, ...], path: str) -> None:
        seen.update(f"{path}.{k}" if path else k for k in allowed)
        allow(self, raw, allowed, path)

    monkeypatch.setattr(checker.Checker, "unknown_keys", record)
    try:
        parsing.parse(FULL, "full.yaml", ".")
    except Exception:  # noqa: BLE001 (made-up paths and factories; only the keys matter)
        pass
    return seen


def spec_paths(spec: type = Schedule, prefix: str = "") -> set[str]:
    paths = set()
    hints = typing.get_type_hints(spec)
    for f in dataclasses.fields(spec):
        if f.name == "base_dir":
            continue
        path = f"{prefix}{f.name}"
        paths.add(path)
        nested = [t for t in (hints[f.name], *typing.get_args(hints[f.name]))]
        for t in nested:
            if dataclasses.is_dataclass(t):
                paths |= spec_paths(t, path + ".")
    return paths


def test_every_key_the_validator_accepts_is_in_the_reference_and_no_other(monkeypatch) -> None:
    documented = {k.path for k in keys.KEYS}
    accepted = accepted_keys(monkeypatch)
    assert accepted - documented == set(), "add them to iterprune/schedule/keys.py"
    assert documented - accepted == set(), "the validator no longer accepts these"


def test_every_spec_field_is_set_by_a_documented_key() -> None:
    documented = {k.path for k in keys.KEYS}
    missing = {
        p for p in spec_paths() if p not in documented and keys.SET_BY.get(p) not in documented
    }
    assert missing == set()


def test_the_page_shows_every_key_with_its_default_from_the_spec() -> None:
    page = reference.markdown()
    for key in keys.KEYS:
        assert f"`{key.path}`" in page
    assert "| `prune.step` | a number in (0, 1) | `0.1` |" in page
    assert "| `finetune.optimizer` | `adam`, `adamw` or `sgd` | `adam` |" in page
