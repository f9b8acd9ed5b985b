from __future__ import annotations

import json
from pathlib import Path

import pytest

from iterprune.errors import ScheduleError, UserError
from iterprune.schedule import parsing as schedule
from iterprune.schedule import specs, stored

ROOT = Path(__file__).resolve().parents[2]

VALID = """\
model:
  builtin: digits_cnn
data:
  builtin: digits
"""

# (schedule text, a fragment every report must contain)
MALFORMED = {
    "yaml_syntax": ("model: [builtin: x\n", "YAML syntax error at line"),
    "empty_file": ("", "the file is empty"),
    "only_comments": ("# nothing here\n", "the file is empty"),
    "list_at_top": ("- model\n- data\n", "top level must be a mapping"),
    "scalar_at_top": ("just text\n", "top level must be a mapping"),
    "step_out_of_range": (
        VALID + "prune: {step: 1.5}\n",
        "prune.step (line 5): must be in (0, 1), got 1.5",
    ),
    "step_zero": (VALID + "prune: {step: 0}\n", "prune.step (line 5): must be in (0, 1)"),
    "target_out_of_range": (
        VALID + "prune: {target_sparsity: 1.0}\n",
        "prune.target_sparsity (line 5): must be in (0, 1)",
    ),
    "max_drop_negative": (
        VALID + "validate: {max_drop: -1}\n",
        "validate.max_drop (line 5): must be ≥ 0 in the metric's units",
    ),
    "max_drop_past_all_accuracy": (
        VALID + "validate: {max_drop: 150}\n",
        "validate.max_drop (line 5): must be in [0, 100] accuracy points",
    ),
    "unknown_method": (
        VALID + "prune: {method: global_magnitud}\n",
        "did you mean 'global_magnitude'",
    ),
    "unknown_top_key": (
        VALID + "prunee: {}\n",
        "prunee (line 5): unknown key; did you mean 'prune'?",
    ),
    "unknown_nested_key": (
        VALID + "finetune: {epochz: 3}\n",
        "finetune.epochz (line 5): unknown key; did you mean 'epochs'?",
    ),
    "wrong_type_epochs": (
        VALID + "finetune: {epochs: two}\n",
        "finetune.epochs (line 5): must be an integer, got 'two'",
    ),
    "float_epochs": (
        VALID + "pretrain: {epochs: 1.5}\n",
        "pretrain.epochs (line 5): must be an integer, got 1.5",
    ),
    "lr_text": (
        VALID + "finetune: {lr: fast}\n",
        "finetune.lr (line 5): must be a number, got 'fast'",
    ),
    "bool_as_number": (VALID + "validate: {max_drop: yes}\n", "must be a number, got boolean true"),
    "both_builtin_and_factory": (
        "model: {builtin: digits_cnn, factory: 'a:b'}\ndata: {builtin: digits}\n",
        "model (line 1): give exactly one of 'builtin' / 'torchvision' / 'factory' / 'huggingface' (builtin and factory given)",
    ),
    "neither_builtin_nor_factory": (
        "model: {kwargs: {}}\ndata: {builtin: digits}\n",
        "model (line 1): give exactly one of 'builtin' / 'torchvision' / 'factory' / 'huggingface' (none given)",
    ),
    "factory_does_not_import": (
        "model: {factory: 'no_such_module_xyz:build'}\ndata: {builtin: digits}\n",
        "cannot import module 'no_such_module_xyz'",
    ),
    "factory_bad_form": (
        "model: {factory: 'just_a_name'}\ndata: {builtin: digits}\n",
        "must look like 'module:function'",
    ),
    "factory_missing_function": (
        "model: {factory: 'json:no_such_fn'}\ndata: {builtin: digits}\n",
        "module 'json' has no function 'no_such_fn'",
    ),
    "missing_model": ("data: {builtin: digits}\n", "model: missing"),
    "missing_data": ("model: {builtin: digits_cnn}\n", "data: missing"),
    "section_not_mapping": (VALID + "prune: 0.1\n", "prune (line 5): must be a mapping, got 0.1"),
    "duplicate_key": (
        VALID + "seed: 1\nseed: 2\n",
        "seed (line 6): duplicate key (first given on line 5)",
    ),
    "no_as_boolean": (
        VALID + "finetune: {optimizer: no}\n",
        "YAML reads yes/no/on/off as booleans",
    ),
    "bad_name": ("name: 'my run!'\n" + VALID, "name (line 1): may contain only letters"),
    "exclude_not_list": (
        VALID + "prune: {exclude: conv1}\n",
        "prune.exclude (line 5): must be a list",
    ),
    "bad_device": (VALID + "device: tpu\n", "device (line 5): must be auto, cpu, cuda or cuda:N"),
    "weights_missing_file": (
        "model: {builtin: digits_cnn, weights: nope.pt}\ndata: {builtin: digits}\n",
        "model.weights (line 1): file not found: nope.pt",
    ),
    "unknown_builtin": (
        "model: {builtin: resnet}\ndata: {builtin: digits}\n",
        "model.builtin (line 1): must be one of",
    ),
    "nan_number": (VALID + "validate: {max_drop: .nan}\n", "must be a finite number"),
    "unknown_torchvision_model": (
        "model: {torchvision: resnet5O}\ndata: {builtin: digits}\n",
        "unknown torchvision model 'resnet5O'; close matches: resnet50",
    ),
    "imagefolder_missing_dirs": (
        "model:\n  builtin: digits_cnn\ndata:\n  imagefolder: {train: nope}\n",
        "data.imagefolder.train (line 4): folder not found: nope",
    ),
    "imagefolder_without_val": (
        "model:\n  builtin: digits_cnn\ndata:\n  imagefolder: {train: .}\n",
        "data.imagefolder.val (line 4): missing",
    ),
    "amp_bad_value": (
        VALID + "finetune: {amp: maybe}\n",
        "finetune.amp (line 5): must be auto, true or false, got 'maybe'",
    ),
    "nesterov_with_adam": (
        VALID + "finetune: {nesterov: true}\n",
        "finetune.nesterov (line 5): applies to optimizer sgd only",
    ),
    "lr_schedule_unknown": (VALID + "finetune: {lr_schedule: cosin}\n", "did you mean 'cosine'"),
    "patience_zero": (
        VALID + "finetune: {patience: 0}\n",
        "finetune.patience (line 5): must be >= 1, got 0",
    ),
    "benchmark_bad_shape": (
        VALID + "benchmark: {input_shape: 224}\n",
        "benchmark.input_shape (line 5): must be a list of positive integers",
    ),
    "checkpoint_every_bad": (
        VALID + "when: {checkpoint_every: soon}\n",
        "when.checkpoint_every (line 5): must be a number of batches",
    ),
    "phases_refused": (
        VALID + "phases: [{method: channel}, {method: global_magnitude}]\n",
        "phases (line 5): a schedule has one pruning method",
    ),
    "scope_without_channel": (
        VALID + "prune: {scope: layer}\n",
        "prune.scope (line 5): applies to method channel only",
    ),
    "lottery_with_channel": (
        VALID + "prune: {method: channel}\nlottery: {rewind: init}\n",
        "lottery mode needs unstructured pruning",
    ),
    "rule_unknown": (
        VALID + "validate: {rule: sure}\n",
        "validate.rule (line 5): must be one of estimate, confident",
    ),
    "confidence_out_of_range": (
        VALID + "validate: {confidence: 1.5}\n",
        "validate.confidence (line 5): must be in [0.5, 1), got 1.5",
    ),
    "grow_below_one": (
        VALID + "rollback: {grow: 0.5}\n",
        "rollback.grow (line 5): must be in [1, 10], got 0.5",
    ),
    "recover_epochs_negative": (
        VALID + "rollback: {recover_epochs: -1}\n",
        "rollback.recover_epochs (line 5): must be >= 0, got -1",
    ),
    "test_fraction_too_big": (
        "model: {builtin: digits_cnn}\ndata: {builtin: digits, val_fraction: 0.5, test_fraction: 0.45}\n",
        "data.test_fraction (line 2): val_fraction + test_fraction must leave at least 10% to train on",
    ),
    "test_fraction_with_folders": (
        "model: {builtin: digits_cnn}\ndata: {imagefolder: {train: ., val: .}, test_fraction: 0.2}\n",
        "data.test_fraction (line 2): applies to built-in data only; give data.imagefolder.test",
    ),
    "trust_pickle_text": (
        "model:\n  {builtin: digits_cnn, trust_pickle: 'yes'}\ndata:\n  builtin: digits\n",
        "must be true or false",
    ),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_schedule_is_reported_with_path_and_line(case: str) -> None:
    text, fragment = MALFORMED[case]
    with pytest.raises(ScheduleError) as err:
        schedule.parse(text, "bad.yaml")
    assert any(fragment in p for p in err.value.problems) or fragment in str(err.value), (
        f"{fragment!r} not in {err.value.problems}"
    )
    assert err.value.exit_code == 2


def test_every_problem_is_reported_at_once() -> None:
    text = VALID + "prune: {step: 2, method: nope}\nfinetune: {lr: -1, epochz: 1}\n"
    with pytest.raises(ScheduleError) as err:
        schedule.parse(text, "bad.yaml")
    problems = err.value.problems
    assert len(problems) == 4, problems
    assert "bad.yaml: 4 problems" in str(err.value)


def test_exponent_without_dot_is_a_number_not_a_string() -> None:
    s = schedule.parse(VALID + "finetune: {lr: 1e-3}\npretrain: {lr: 5E-4}\n")
    assert s.finetune.lr == pytest.approx(1e-3)
    assert isinstance(s.finetune.lr, float)
    assert s.pretrain.lr == pytest.approx(5e-4)


def test_defaults_and_name_from_file_stem() -> None:
    s = schedule.parse(VALID, "schedules/my-run.yaml")
    assert s.name == "my-run"
    assert s.prune.method == "global_magnitude"
    assert s.rollback.shrink == 0.5


def test_fingerprint_ignores_comments_but_not_values() -> None:
    a = schedule.parse(VALID + "seed: 1\n")
    b = schedule.parse("# a comment\n" + VALID + "seed: 1  # same\n")
    c = schedule.parse(VALID + "seed: 2\n")
    assert a.fingerprint() == b.fingerprint() != c.fingerprint()
    assert stored.differences(a.canonical(), c.canonical()) == ["seed: 1 -> 2"]


def test_fingerprint_leaves_out_fields_at_their_defaults() -> None:
    """A field a later release adds (with a default) must not change the identity of a run."""
    implicit = schedule.parse(VALID)
    explicit = schedule.parse(
        VALID + "rollback: {retries: 3, shrink: 0.5}\nvalidate: {max_drop: 1.0}\n"
    )
    assert implicit.fingerprint() == explicit.fingerprint()
    assert (
        implicit.fingerprint() != schedule.parse(VALID + "rollback: {retries: 4}\n").fingerprint()
    )


@pytest.mark.parametrize(
    "section",
    [
        "report: {tensorboard: tb}",
        "benchmark: {batch_size: 2}",
        "when: {window: '0 22-23 * * *', checkpoint_every: 10m}",
        "checkpoints: {keep: all}",
    ],
)
def test_fingerprint_leaves_out_how_a_run_is_watched_and_served(section: str) -> None:
    plain = schedule.parse(VALID)
    assert schedule.parse(VALID + section + "\n").fingerprint() == plain.fingerprint()
    assert section.split(":")[0] in specs.OPERATING


# Pinned: a change here means every run started from these schedules is refused as "changed".
# Change a pin only together with the schedule file itself (digits.yaml got its test split in
# the release after 0.1.0, and a 0.5-point validation budget in the same release).
PINNED = {
    "schedules/diabetes.yaml": "a29217eff66f7fe2",
    "schedules/digits.yaml": "bbebffda0cfb4269",
    "schedules/tiny-lm.yaml": "62822db2a6d95e13",
    "tests/fixtures/state-0.1/schedule.yaml": "55b2a1dde29730ab",
}


@pytest.mark.parametrize("path", sorted(PINNED))
def test_fingerprints_of_shipped_schedules_are_pinned(path: str) -> None:
    assert schedule.load(ROOT / path).fingerprint() == PINNED[path]


def test_canonical_round_trips(tmp_path: Path) -> None:
    (tmp_path / "train").mkdir()
    text = (
        "model: {torchvision: resnet18, num_classes: 3}\n"
        f"data: {{imagefolder: {{train: {tmp_path / 'train'}, val: {tmp_path / 'train'}}}}}\n"
        "prune: {exclude: ['0', 'fc*']}\nbenchmark: {input_shape: [3, 32, 32]}\n"
        "finetune: {amp: false, patience: 2, lr_schedule: cosine}\nwhen: {checkpoint_every: 10m}\n"
    )
    s = schedule.parse(text)
    assert s.finetune.amp == "off" and s.when.checkpoint_every_s == 600
    assert stored.from_canonical(s.canonical(), s.base_dir) == s  # as a run stores them


def test_factory_is_imported_from_the_schedule_directory(tmp_path: Path) -> None:
    (tmp_path / "mymodels.py").write_text("def build():\n    return None\n")
    path = tmp_path / "s.yaml"
    path.write_text("model: {factory: 'mymodels:build'}\ndata: {builtin: digits}\n")
    assert schedule.load(path).model.factory == "mymodels:build"


def test_missing_file_is_a_user_error(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="schedule file not found"):
        schedule.load(tmp_path / "nope.yaml")


@pytest.mark.parametrize("path", sorted((ROOT / "schedules").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_schedule_validates(path: Path, tmp_path: Path) -> None:
    """Each shipped schedule validates once the files it names (the user's own) exist; the
    factories that ship beside the schedules go with it."""
    copy = tmp_path / "schedules" / path.name
    copy.parent.mkdir()
    copy.write_text(path.read_text())
    for module in path.parent.glob("*.py"):
        (copy.parent / module.name).write_text(module.read_text())
    try:
        schedule.load(copy)
    except ScheduleError as err:
        for problem in err.problems:
            assert "not found" in problem, problem  # only the user's files may be missing
            missing = problem.rsplit("not found: ", 1)[1]
            target = copy.parent / missing
            target.parent.mkdir(parents=True, exist_ok=True)
            if "weights" in problem:
                target.write_bytes(b"")
            else:
                target.mkdir()
        schedule.load(copy)


def test_a_budget_can_be_a_share_of_the_dense_models_accuracy() -> None:
    relative = schedule.parse(VALID + "validate: {max_drop: 2%}\n").validate
    assert relative.relative and relative.max_drop == 2.0
    assert relative.budget(90.0) == pytest.approx(1.8) and relative.describe().startswith("2%")
    points = schedule.parse(VALID + "validate: {max_drop: 0.5}\n").validate
    assert not points.relative and points.budget(90.0) == 0.5
    # an absolute budget is the same run as before relative ones existed
    assert "relative" not in json.dumps(specs._set_fields(schedule.parse(VALID)))


@pytest.mark.parametrize("text", ["0%", "150%", "two%", "-1%"])
def test_a_percentage_budget_must_be_in_0_to_100(text: str) -> None:
    with pytest.raises(
        ScheduleError, match=r"validate.max_drop \(line \d+\): must be a percentage"
    ):
        schedule.parse(VALID + f"validate: {{max_drop: '{text}'}}\n")


def test_two_schedules_factories_of_one_name_stay_apart(tmp_path: Path) -> None:
    """A serve (or the Python API) runs schedules of many directories in one process: the
    second ``models.py`` was the first one's, from sys.modules, and its run got the wrong model."""
    from iterprune.schedule.factories import resolve_factory

    for name in ("a", "b", "c"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "samename_models.py").write_text(f"def build():\n    return {name!r}\n")
    nested = tmp_path / "a" / "sub"  # a schedule's directory inside another's
    nested.mkdir()
    (nested / "samename_models.py").write_text("def build():\n    return 'sub'\n")
    dirs = [tmp_path / "a", tmp_path / "b", tmp_path / "c", nested, tmp_path / "a"]
    found = [resolve_factory("samename_models:build", d)() for d in dirs]
    assert found == ["a", "b", "c", "sub", "a"]
    (tmp_path / "a" / "json.py").write_text("def build():\n    return 'shadow'\n")
    with pytest.raises(UserError, match="no function 'build'"):
        resolve_factory("json:build", tmp_path / "a")  # the standard library's stays
    assert json.dumps([1]) == "[1]"
