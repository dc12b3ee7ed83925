"""Typed config: presets, dotted overrides, error messages and dict round trips."""

from __future__ import annotations

import pytest
import yaml

from anchorfree.config import PRESETS, Config, ConfigError, all_keys, apply_overrides, config_from_dict, dump_yaml, get_preset
from anchorfree.models import build_model
from anchorfree.models.backbones import ModulatedDeformConv, PyramidP2Neck, UpsamplingNeck
from anchorfree.models.centernet import CenterNet, CenterNetConfig
from anchorfree.models.fcos import FCOS


@pytest.mark.parametrize("name", [name for name in PRESETS if get_preset(name).model.name == "fcos"])
def test_every_fcos_preset_builds_an_fcos(name: str) -> None:
    config = get_preset(name)
    assert isinstance(config, Config) and config.preset == name
    config.model.pretrained_backbone = False  # no network in tests
    model = build_model(config.model, num_classes=3)
    assert isinstance(model, FCOS)
    assert model.head.class_logits.out_channels == 3
    assert model.config.fpn_channels == config.model.fcos.fpn_channels
    assert len(model.head.classification_tower) == 3 * config.model.fcos.head_convs  # conv, GroupNorm, ReLU each


def test_presets_are_fresh_objects() -> None:
    first = get_preset("fcos_cpu")
    first.train.epochs = 999
    first.model.fcos.size_boundaries.append(1024.0)
    second = get_preset("fcos_cpu")
    assert second.train.epochs == 6
    assert second.model.fcos.size_boundaries == [32.0, 64.0, 128.0, 256.0]


def test_unknown_preset_suggests_the_closest_name() -> None:
    with pytest.raises(ConfigError, match="unknown preset 'fcos_cpuu'; did you mean 'fcos_cpu'"):
        get_preset("fcos_cpuu")


def _get(config: Config, key: str):
    node = config
    for part in key.split("."):
        node = getattr(node, part)
    return node


@pytest.mark.parametrize(
    "override, key, expected",
    [
        ("train.epochs=24", "train.epochs", 24),
        ("train.epochs=3.0", "train.epochs", 3),  # an integral float is an int
        ("train.lr=0.02", "train.lr", 0.02),
        ("train.lr=1", "train.lr", 1.0),  # an int is a float
        ("train.amp=true", "train.amp", True),
        ("train.channels_last=false", "train.channels_last", False),
        ("data.train_sizes=[256, 320]", "data.train_sizes", [256, 320]),
        ("data.train_sizes=288", "data.train_sizes", [288]),  # a scalar becomes a one-item list
        ("model.fcos.head_convs=2", "model.fcos.head_convs", 2),
        ("model.fcos.size_boundaries=[32, 64, 128, 256]", "model.fcos.size_boundaries", [32.0, 64.0, 128.0, 256.0]),
        ("model.fcos.nms_threshold=0.5", "model.fcos.nms_threshold", 0.5),
        ("data.train=a/b c.json", "data.train", "a/b c.json"),
        ("train.name=2024", "train.name", "2024"),  # a number is a valid string
        ("train.name=", "train.name", ""),
    ],
)
def test_string_overrides_are_parsed_to_the_field_type(override: str, key: str, expected) -> None:
    config = apply_overrides(get_preset("fcos_cpu"), [override])
    value = _get(config, key)
    assert value == expected and type(value) is type(expected)
    if isinstance(value, list):
        assert [type(item) for item in value] == [type(item) for item in expected]


def test_dict_overrides_and_the_original_is_not_modified() -> None:
    base = get_preset("fcos_cpu")
    config = apply_overrides(base, {"train.epochs": 2, "model.fcos.fpn_channels": 32, "data.train_sizes": (128, 160)})
    assert (config.train.epochs, config.model.fcos.fpn_channels, config.data.train_sizes) == (2, 32, [128, 160])
    assert (base.train.epochs, base.model.fcos.fpn_channels, base.data.train_sizes) == (6, 64, [288, 320, 352])


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.epoch=3", "unknown key 'train.epoch'; did you mean 'train.epochs'?"),
        ("model.fcos.head_conv=3", "did you mean 'model.fcos.head_convs'?"),
        ("trian.epochs=3", "did you mean 'train.epochs'?"),
    ],
)
def test_unknown_key_suggests_the_closest_key(override: str, message: str) -> None:
    with pytest.raises(ConfigError) as error:
        apply_overrides(get_preset("fcos_cpu"), [override])
    assert message in str(error.value)


def test_unknown_key_without_a_close_match_has_no_suggestion() -> None:
    with pytest.raises(ConfigError) as error:
        apply_overrides(get_preset("fcos_cpu"), ["zzz=1"])
    assert str(error.value) == "unknown key 'zzz'"


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.epochs=abc", "train.epochs expects an integer, got 'abc'"),
        ("train.epochs=1.5", "train.epochs expects an integer, got 1.5"),
        ("train.epochs=true", "train.epochs expects an integer, got True"),
        ("train.amp=1", "train.amp expects true or false, got 1"),
        ("train.lr=fast", "train.lr expects a number, got 'fast'"),
        ("train.lr=[0.1]", "train.lr expects a number, got [0.1]"),
        ("data.train_sizes=[256, big]", "data.train_sizes expects an integer, got 'big'"),
        ("data.train=[a, b]", "data.train expects a string"),
        ("train.epochs", "must be key=value"),
        ("train.epochs.x=1", "'train.epochs' is a value, not a section"),
        ("train.lr=[1, 2", "cannot parse the value of 'train.lr'"),
    ],
)
def test_wrong_values_raise_config_error(override: str, message: str) -> None:
    with pytest.raises(ConfigError) as error:
        apply_overrides(get_preset("fcos_cpu"), [override])
    assert message in str(error.value)


def test_scientific_notation_learning_rate_is_a_number() -> None:
    # PyYAML (YAML 1.1) reads "1e-3" as the *string* '1e-3' (its float pattern needs a '.'), so the most common way
    # to write a learning rate on the command line is rejected as "train.lr expects a number, got '1e-3'".
    try:
        config = apply_overrides(get_preset("fcos_cpu"), ["train.lr=1e-3", "train.weight_decay=5e-2"])
    except ConfigError as error:
        pytest.fail(f"BUG (anchorfree/config.py _coerce/_split): 'train.lr=1e-3' must parse as 0.001, got ConfigError: {error}")
    assert config.train.lr == 0.001 and config.train.weight_decay == 0.05


@pytest.mark.parametrize("name", list(PRESETS))
def test_config_from_dict_round_trips(name: str) -> None:
    family = get_preset(name).model.name
    config = apply_overrides(get_preset(name), ["train.epochs=5", f"model.{family}.max_detections=50", "train.amp=true"])
    assert config_from_dict(config.to_dict()) == config
    assert config_from_dict(yaml.safe_load(dump_yaml(config))) == config  # the run folder's config.yaml


# ------------------------------------------------------------------------------------ the active family only


@pytest.mark.parametrize("order", ["name first", "name last"])
def test_a_family_key_applies_with_the_family_the_call_selects(order: str) -> None:
    """`model.name=centernet model.centernet.x=...` works in either order: the check comes after every key is set."""
    overrides = ["model.centernet.nms_threshold=0.5", "model.name=centernet"]
    config = apply_overrides(get_preset("fcos_cpu"), overrides if order == "name last" else overrides[::-1])
    assert config.model.name == "centernet" and config.model.centernet.nms_threshold == 0.5


@pytest.mark.parametrize(
    "preset, overrides, message",
    [
        ("fcos_cpu", ["model.centernet.nms_threshold=0.5"], "model.centernet.nms_threshold does not apply to model.name=fcos (its settings are model.fcos.*)"),
        ("fcos_cpu", ["model.fcos.head_convs=2", "model.name=cornernet"], "model.fcos.head_convs does not apply to model.name=cornernet (its settings are model.cornernet.*)"),
        ("centernet_cpu", ["model.fcos.nms_threshold=0.5"], "model.fcos.nms_threshold does not apply to model.name=centernet (its settings are model.centernet.*)"),
        ("centernet_cpu", ["model.cornernet.nms_threshol=0.5"], "model.cornernet.nms_threshol does not apply to model.name=centernet"),  # a typo too
    ],
)
def test_another_familys_key_is_a_config_error(preset: str, overrides: list[str], message: str) -> None:
    with pytest.raises(ConfigError) as error:
        apply_overrides(get_preset(preset), overrides)
    assert message in str(error.value)


def test_saved_config_keys_and_suggestions_hold_the_active_family_only() -> None:
    config = get_preset("centernet_cpu")
    saved = config.to_dict()
    assert "centernet" in saved["model"] and "fcos" not in saved["model"] and "cornernet" not in saved["model"]
    assert "fcos:" not in dump_yaml(config) and "cornernet:" not in dump_yaml(config)
    keys = all_keys(config)
    assert "model.centernet.nms_threshold" in keys and not [key for key in keys if key.startswith(("model.fcos.", "model.cornernet."))]
    with pytest.raises(ConfigError) as error:  # with every family's keys, 'model.fcos.nms_threshold' would be closest
        apply_overrides(config, ["model.nms_threshold=0.5"])
    assert str(error.value) == "unknown key 'model.nms_threshold'; did you mean 'model.centernet.nms_threshold'?"
    # The inactive sections are still there: switching families gives that family's defaults.
    assert apply_overrides(config, ["model.name=fcos"]).to_dict()["model"]["fcos"] == get_preset("fcos_r50_fpn_1x").to_dict()["model"]["fcos"]


def test_an_old_saved_config_with_every_family_and_no_structure_key_still_loads() -> None:
    """Saved before only the active family was kept, and before model.freeze_backbone_norm: the other sections are
    ignored (even with values no override could set now), and the structure follows pretrained_backbone."""
    import dataclasses

    for pretrained in (True, False):
        old = dataclasses.asdict(apply_overrides(get_preset("fcos_cpu"), {"model.pretrained_backbone": pretrained, "model.fcos.head_convs": 3}))
        del old["model"]["freeze_backbone_norm"]
        old["model"]["centernet"]["nms_threshold"] = 0.9
        old["model"]["cornernet"]["no_longer_a_key"] = 1
        config = config_from_dict(old)
        assert config.model.pretrained_backbone is pretrained and config.model.freeze_backbone_norm is pretrained
        assert config.model.fcos.head_convs == 3 and config.model.centernet == CenterNetConfig()


def test_pretrained_backbone_set_alone_sets_the_structure_too() -> None:
    assert get_preset("fcos_cpu").model.freeze_backbone_norm and get_preset("fcos_cpu").model.pretrained_backbone
    assert not get_preset("fcos_demo").model.freeze_backbone_norm and not get_preset("cornernet_hg104").model.freeze_backbone_norm
    scratch = apply_overrides(get_preset("fcos_cpu"), ["model.pretrained_backbone=false"])
    assert (scratch.model.pretrained_backbone, scratch.model.freeze_backbone_norm) == (False, False)
    pretrained = apply_overrides(get_preset("fcos_demo"), {"model.pretrained_backbone": True, "model.backbone": "mobilenet_v2"})
    assert (pretrained.model.pretrained_backbone, pretrained.model.freeze_backbone_norm) == (True, True)
    for overrides in (["model.freeze_backbone_norm=true", "model.pretrained_backbone=false"], ["model.pretrained_backbone=false", "model.freeze_backbone_norm=true"]):
        both = apply_overrides(get_preset("fcos_cpu"), overrides)
        assert (both.model.pretrained_backbone, both.model.freeze_backbone_norm) == (False, True)


@pytest.mark.parametrize("name", [name for name in PRESETS if get_preset(name).model.pretrained_backbone])
def test_pretrained_presets_freeze_backbone_norm_and_build_it(name: str) -> None:
    from anchorfree.models.backbones import FrozenNorm

    config = get_preset(name)
    assert config.model.freeze_backbone_norm
    config.model.pretrained_backbone = False  # no network in tests; the structure stays
    assert isinstance(build_model(config.model, num_classes=2).backbone, FrozenNorm)


def test_freezing_the_norm_of_an_hourglass_is_refused() -> None:
    from anchorfree.config import validate

    config = apply_overrides(get_preset("cornernet_hg104"), ["model.freeze_backbone_norm=true"])
    with pytest.raises(ConfigError, match="model.freeze_backbone_norm must be false with model.backbone=hourglass104"):
        validate(config)


def test_inference_overrides_allow_test_time_keys_only() -> None:
    from anchorfree.config import INFERENCE_SETTINGS, apply_inference_overrides, inference_keys

    config = get_preset("centernet_cpu")
    changed = apply_inference_overrides(config, ["model.centernet.score_threshold=0.2", "data.val_size=256", "model.centernet.flip_test=true"])
    assert (changed.model.centernet.score_threshold, changed.data.val_size, changed.model.centernet.flip_test) == (0.2, 256, True)
    assert config.model.centernet.score_threshold == 0.01  # a copy
    assert inference_keys(config) == [*(f"model.centernet.{key}" for key in INFERENCE_SETTINGS["centernet"]), "data.val_size", "data.max_size", "train.amp"]
    for key in ("model.centernet.head_channels", "model.centernet.min_overlap", "model.fcos.score_threshold", "model.name", "train.lr"):
        with pytest.raises(ConfigError) as error:
            apply_inference_overrides(config, {key: 1}, "checkpoint w.safetensors")
        message = str(error.value)
        assert message.startswith(f"{key} cannot be changed when loading checkpoint w.safetensors") and "model.centernet.nms_threshold" in message
        assert "data.val_size" in message
    with pytest.raises(ConfigError, match="did you mean 'model.centernet.score_threshold'"):
        apply_inference_overrides(config, ["model.centernet.score_treshold=0.2"])
    with pytest.raises(ConfigError, match="data.max_size must be >="):  # range-checked like a training config
        apply_inference_overrides(get_preset("fcos_cpu"), ["data.val_size=1000"])


def test_a_removed_key_is_unknown_but_old_saves_holding_it_still_load() -> None:
    """train.log_every was read by nothing and is gone: overriding it is an unknown key, while a config.yaml or
    checkpoint saved with it reads as the same config."""
    with pytest.raises(ConfigError, match="unknown key 'train.log_every'"):
        apply_overrides(get_preset("fcos_cpu"), ["train.log_every=5"])
    old = get_preset("fcos_cpu").to_dict()
    old["train"]["log_every"] = 10
    assert config_from_dict(old) == get_preset("fcos_cpu")
    assert config_from_dict(yaml.safe_load(yaml.safe_dump(old, sort_keys=False))) == get_preset("fcos_cpu")


def test_config_from_dict_rejects_unknown_keys() -> None:
    values = get_preset("fcos_cpu").to_dict()
    values["train"]["epoch"] = 3
    with pytest.raises(ConfigError, match="did you mean 'train.epochs'"):
        config_from_dict(values)


def test_all_keys_lists_every_dotted_leaf() -> None:
    keys = all_keys(get_preset("fcos_cpu"))
    assert len(keys) == len(set(keys))
    for key in ("preset", "model.backbone", "model.fcos.size_boundaries", "data.train_sizes", "train.epochs", "train.lr"):
        assert key in keys
    assert "model.fcos" not in keys and "train" not in keys


# ------------------------------------------------------------------------------------------------- CenterNet


@pytest.mark.parametrize("name, neck_type, deformable_convs", [("centernet_cpu", PyramidP2Neck, 0), ("centernet_r18", UpsamplingNeck, 3)])
def test_centernet_presets_build_a_centernet(name: str, neck_type: type, deformable_convs: int) -> None:
    """Both CenterNet presets build a CenterNet with their neck (FPN-P2; the paper's deconv stages with DCN) and C classes."""
    config = get_preset(name)
    assert config.model.name == "centernet" and config.preset == name
    config.model.pretrained_backbone = False  # no network in tests
    model = build_model(config.model, num_classes=3)
    assert isinstance(model, CenterNet)
    assert model.config == config.model.centernet
    assert isinstance(model.neck, neck_type) and model.stride == 4
    assert sum(isinstance(module, ModulatedDeformConv) for module in model.modules()) == deformable_convs
    assert model.head.heatmap[-1].out_channels == 3
    assert model.head.heatmap[0].out_channels == config.model.centernet.head_channels


def test_centernet_r18_preset_uses_the_papers_step_schedule() -> None:
    """centernet_r18: Adam(W) 1.25e-4, 140 epochs, lr x0.1 at epochs 90 and 120."""
    train = get_preset("centernet_r18").train
    assert (train.lr_schedule, train.lr_steps, train.epochs, train.lr) == ("step", [90, 120], 140, 1.25e-4)


def test_centernet_radius_formula_override_reaches_the_model() -> None:
    """model.centernet.radius_formula / min_overlap overrides are typed and end up in the built model's config."""
    config = apply_overrides(get_preset("centernet_cpu"), ["model.centernet.radius_formula=original", "model.centernet.min_overlap=0.7"])
    assert config.model.centernet.radius_formula == "original" and config.model.centernet.min_overlap == 0.7
    assert get_preset("centernet_cpu").model.centernet.radius_formula == "corrected"  # the preset itself is unchanged
    config.model.pretrained_backbone = False
    model = build_model(config.model, num_classes=2)
    assert (model.config.radius_formula, model.config.min_overlap) == ("original", 0.7)
    # An unknown formula is a string to the config, and is refused with the choices when the model is built.
    bad = apply_overrides(config, ["model.centernet.radius_formula=exact"])
    with pytest.raises(ValueError, match="unknown radius formula 'exact'; choose one of original, corrected"):
        build_model(bad.model, num_classes=2)


def test_centernet_key_typo_suggests_the_right_key() -> None:
    """`model.centernet.radius_formul=x` names the key it did not find and the one that was meant."""
    with pytest.raises(ConfigError) as error:
        apply_overrides(get_preset("centernet_cpu"), ["model.centernet.radius_formul=x"])
    assert str(error.value) == "unknown key 'model.centernet.radius_formul'; did you mean 'model.centernet.radius_formula'?"


# --------------------------------------------------------------------------------------------- value ranges


@pytest.mark.parametrize(
    "key, value, allowed",
    [
        ("train.batch_size", 0, ">= 1"),
        ("train.epochs", 0, ">= 1"),
        ("train.lr", float("nan"), "a finite number > 0"),
        ("train.lr", -0.1, "a finite number > 0"),
        ("train.lr", 0.0, "a finite number > 0"),
        ("train.eval_every", 0, ">= 1 epochs"),
        ("train.time_limit", -1.0, "a finite number of minutes >= 0"),
        ("train.grad_clip", -1.0, "a finite number >= 0"),
        ("train.weight_decay", -1e-4, "a finite number >= 0"),
        ("train.warmup_iters", -5, ">= 0 steps"),
        ("train.warmup_factor", 0.0, "in (0, 1]"),
        ("train.warmup_factor", 2.0, "in (0, 1]"),
        ("train.final_lr_ratio", 1.5, "in [0, 1]"),
        ("train.momentum", 1.0, "in [0, 1)"),
        ("train.optimizer", "adam", "'sgd' or 'adamw'"),
        ("train.lr_schedule", "linear", "'cosine' or 'step'"),
        ("train.device", "gpu", "auto, cpu, cuda, cuda:N or mps"),
        ("train.name", "../x", "a plain folder name inside train.project"),
        ("data.workers", -1, ">= 0"),
        ("data.max_size", 100, ">= the largest of data.train_sizes and data.val_size (384)"),
        ("data.horizontal_flip", 1.5, "a probability in [0, 1]"),
        ("model.name", "yolo", "one of fcos, centernet, cornernet"),
        ("model.backbone", "resnet51", "one of resnet18"),
        ("model.backbone_width", 0.0, "a positive multiplier"),
    ],
)
def test_validate_names_the_key_the_value_and_the_allowed_range(key: str, value: object, allowed: str) -> None:
    """Issue 11.9; RELIABILITY H4: every value is range-checked before a file is read, naming key, value and range."""
    from anchorfree.config import validate

    # data.max_size caps the longer side with data.resize=shorter only (the demo presets letterbox).
    config = apply_overrides(get_preset("fcos_mobilenet_v2_cpu" if key == "data.max_size" else "fcos_cpu"), {key: value})
    with pytest.raises(ConfigError) as error:
        validate(config)
    message = str(error.value)
    assert message.startswith(key) and allowed in message and f"got {value!r}" in message, message


def test_validate_lists_every_bad_value_at_once() -> None:
    """Issue 11.9: several bad values are one error listing each, so all are fixed in one go."""
    from anchorfree.config import validate

    config = apply_overrides(get_preset("fcos_cpu"), {"train.batch_size": 0, "data.workers": -1, "train.optimizer": "adam"})
    with pytest.raises(ConfigError) as error:
        validate(config)
    assert all(key in str(error.value) for key in ("train.batch_size", "data.workers", "train.optimizer"))


@pytest.mark.parametrize("name", list(PRESETS))
def test_every_preset_is_valid(name: str) -> None:
    """Issue 11.9: the range checks accept every shipped preset."""
    from anchorfree.config import validate

    validate(get_preset(name))


def test_with_absolute_paths_resolves_relative_paths_against_a_base(tmp_path) -> None:
    """Issue 11.8: relative data and project paths become absolute; empty ones stay empty."""
    from anchorfree.config import with_absolute_paths

    config = apply_overrides(get_preset("fcos_cpu"), {"data.train": "base/train.json", "data.val": "/data/val.json", "train.project": "runs"})
    resolved = with_absolute_paths(config, tmp_path)
    assert resolved.data.train == str(tmp_path / "base" / "train.json")
    assert resolved.data.val == "/data/val.json"
    assert resolved.train.project == str(tmp_path / "runs")
    assert resolved.data.dataset == "" and resolved.data.images == ""
    assert config.data.train == "base/train.json"  # a copy: the caller's config is unchanged
