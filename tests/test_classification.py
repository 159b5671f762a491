"""Stride surgery, students, RED placement, paper memory convention and save/load of timm classifiers."""

import json

import pytest
import timm
import torch
from torch import nn

from redistill_diffusion.classification import (
    StridePlan,
    create_student,
    create_teacher,
    downsampling_taps,
    paper_pairs,
    parse_stride_notation,
    read_stride_plan,
)
from redistill_diffusion.classification.hub import (
    card_for,
    load_classifier,
    push_classifier_to_hub,
    read_classifier_config,
    save_classifier,
)
from redistill_diffusion.memory import measure_peak_memory

TINY_RESNET = dict(channels=(8, 16, 16, 32), stem_type="deep", stem_width=4)

# (name, timm kwargs, input size, student stem stride)
FAMILIES = [
    ("resnet18", TINY_RESNET, 64, 8),  # BasicBlock, deep stem
    ("resnet26", dict(channels=(8, 8, 16, 16)), 64, 8),  # Bottleneck, 7x7 stem, conv shortcut
    (
        "resnext50_32x4d",
        dict(layers=(1, 1, 1, 1), channels=(16, 16, 32, 32), base_width=4, cardinality=4),
        64,
        8,
    ),
    ("resnet10t", dict(channels=(8, 16, 16, 32)), 64, 8),  # tiered stem, avg-pool shortcut
    ("mobilenetv2_050", {}, 64, 8),
    ("mobilenetv3_small_050", {}, 64, 8),
    ("mobilenetv3_large_075", {}, 64, 8),
]


def _features(model, size):
    model.eval()
    with torch.no_grad():
        return model.forward_features(
            torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))
        )


def _measured_reductions(model, size):
    """Reductions seen by hooks, independent of the code that writes feature_info."""
    seen = {}
    modules = dict(model.named_modules())
    handles = [
        modules[info["module"]].register_forward_hook(
            lambda m, a, o, i=i: seen.__setitem__(i, size // o.shape[-1])
        )
        for i, info in enumerate(model.feature_info)
    ]
    _features(model, size)
    for handle in handles:
        handle.remove()
    return [seen[i] for i in range(len(model.feature_info))]


@pytest.mark.parametrize("name,kwargs,size,stem", FAMILIES, ids=[f[0] for f in FAMILIES])
def test_surgery_keeps_final_resolution_shapes_and_truthful_feature_info(name, kwargs, size, stem):
    teacher = create_teacher(name, num_classes=7, **kwargs)
    student = create_student(teacher, stem_stride=stem)
    t_plan, s_plan = read_stride_plan(teacher), read_stride_plan(student)
    assert s_plan.stem_stride == stem and s_plan.stem_stride > t_plan.stem_stride
    assert s_plan.total_stride == t_plan.total_stride
    assert _features(student, size).shape == _features(teacher, size).shape
    student.eval()
    assert student(torch.randn(1, 3, size, size)).shape == (1, 7)
    teacher_shapes = {k: v.shape for k, v in teacher.state_dict().items()}
    student_shapes = {k: v.shape for k, v in student.state_dict().items() if not k.startswith("red_blocks.")}
    assert student_shapes == teacher_shapes  # weights copy 1:1
    assert [f["reduction"] for f in student.feature_info] == _measured_reductions(student, size)
    assert student.feature_info[0]["reduction"] == s_plan.stem_conv_stride
    assert len(student.red_blocks) == len(downsampling_taps(student)) >= 1


def test_paper_resnet18_student_notation_and_pairs():
    """the paper: student derivation, RED placement by resolution: conv1 8, max-pool 1, stages 1,2,2,1; the paper's five RED pairs."""
    teacher = create_teacher("resnet18", num_classes=10, **TINY_RESNET)
    student = create_student(teacher, stem_stride=8)
    assert read_stride_plan(teacher).notation() == "2-21222"
    assert read_stride_plan(student) == StridePlan(8, 1, (1, 2, 2, 1))
    assert read_stride_plan(student).notation() == "8-11221"
    assert read_stride_plan(create_student(teacher, strides="8-11221")) == read_stride_plan(student)
    named = create_student("resnet18-8-11221", num_classes=10, **TINY_RESNET)
    assert read_stride_plan(named) == read_stride_plan(student)
    assert paper_pairs(student, teacher, (224, 224)) == [
        ("conv1:output", "layer2.0:output"),
        ("layer2.0:input", "layer3.0:input"),
        ("layer2.0:output", "layer3.0:output"),
        ("layer3.0:input", "layer4.0:input"),
        ("layer3.0:output", "layer4.0:output"),
    ]


def test_reference_mobilenet_notations():
    """The reference STL10 configs: MobileNetV2 1-1222121 -> 8-1211111, MobileNetV3-small per-block digits."""
    mbv2 = create_teacher("mobilenetv2_050", num_classes=10, cifar_stem=True)
    assert read_stride_plan(mbv2).notation() == "1-1222121"
    assert read_stride_plan(create_student(mbv2, stem_stride=8)).notation() == "8-1211111"
    assert read_stride_plan(create_student(mbv2, stem_stride=4)).notation() == "4-1221111"
    mbv3 = create_teacher("mobilenetv3_small_050", num_classes=10, cifar_stem=True)
    assert parse_stride_notation("1-22121111211", mbv3) == read_stride_plan(mbv3)
    student = create_student(mbv3, strides="4-22111111111")
    assert read_stride_plan(student) == read_stride_plan(create_student(mbv3, stem_stride=4))
    pairs = paper_pairs(student, mbv3, (128, 128))
    assert pairs[0] == ("conv_stem:output", "blocks.1.0.conv_dw:output")
    assert pairs[1:3] == [
        ("blocks.0.0.conv_dw:input", "blocks.2.0.conv_dw:input"),
        ("blocks.0.0.conv_dw:output", "blocks.2.0.conv_dw:output"),
    ]


def test_cifar_stem_and_init():
    teacher = create_teacher("resnet18", num_classes=10, cifar_stem=True, **TINY_RESNET)
    assert (
        isinstance(teacher.conv1, nn.Conv2d)
        and teacher.conv1.kernel_size == (3, 3)
        and teacher.conv1.stride == (1, 1)
    )
    assert isinstance(teacher.maxpool, nn.Identity)
    assert _features(teacher, 32).shape[-2:] == (4, 4)
    copied = create_student(teacher, stem_stride=4, red_placement=None)
    for key, value in teacher.state_dict().items():
        assert torch.equal(copied.state_dict()[key], value), key
    assert not hasattr(copied, "red_blocks") or len(copied.red_blocks) == 0
    random = create_student(teacher, stem_stride=4, init="random", red_placement=None)
    assert not torch.equal(
        random.state_dict()["layer1.0.conv1.weight"], teacher.state_dict()["layer1.0.conv1.weight"]
    )
    assert _features(copied, 32).shape == _features(teacher, 32).shape


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(stem_stride=8, stage_strides=[1, 2, 2, 2]), "final resolution"),
        (dict(strides="8-11222"), "final resolution"),
        (dict(stem_stride=6), "multiple"),
        (dict(stem_stride=1), "multiple"),
        (dict(stem_stride=256), "too large"),
        (dict(strides="8-1122"), "digits"),
        (dict(strides="eight"), "notation"),
        (dict(init="zeros"), "init"),
        (dict(red_placement="everywhere"), "red_placement"),
        (dict(num_classes=3), "num_classes"),
        (dict(stem_stride=8, stage_strides=[2, 1, 2, 1]), "projection"),
    ],
)
def test_student_errors_are_clear(kwargs, message):
    teacher = create_teacher("resnet18", num_classes=10, **TINY_RESNET)
    with pytest.raises(ValueError, match=message):
        create_student(teacher, **kwargs)


def test_unsupported_family_and_unknown_name():
    with pytest.raises(ValueError, match="supports timm ResNet"):
        create_student(timm.create_model("convnext_atto", num_classes=10))
    with pytest.raises(ValueError, match="Unknown architecture"):
        create_teacher("resnet-does-not-exist")


def test_resnet18_paper_memory_figures():
    """the paper: the memory convention, docs/memory.md: ResNet18 at 224, 3.83 MB -> 0.766 MB with the conv1-stride-8 student (within 1%)."""
    teacher = timm.create_model("resnet18")
    student = create_student(teacher, stem_stride=8)
    t_report = measure_peak_memory(teacher, (3, 224, 224), convention="paper")
    s_report = measure_peak_memory(student, (3, 224, 224), convention="paper")
    assert t_report.peak_mb == pytest.approx(3.83, rel=0.01) and t_report.peak_layer == "maxpool"
    assert s_report.peak_mb == pytest.approx(0.766, rel=0.01) and s_report.peak_layer == "conv1"
    assert any(layer.name.startswith("red_blocks.") for layer in s_report.layers)


def test_resnet_convention_quirk_uses_stage_input():
    """The identity residual of every block is the STAGE input (the reference estimator's quirk)."""
    teacher = create_teacher("resnet18", num_classes=10, cifar_stem=True, **TINY_RESNET)
    report = measure_peak_memory(teacher, (3, 32, 32), convention="paper")
    layers = {layer.name: layer.bytes for layer in report.layers}
    # layer2.1: convs at 16 ch x 16 x 16 (in + out) + the stage input (layer1's 8 ch x 32 x 32), not its
    # own input (16 ch x 16 x 16)
    assert layers["layer2.1"] == (2 * 16 * 16 * 16 + 8 * 32 * 32) * 4


def test_cpu_recipe_student_has_4x_lower_exact_peak():
    teacher = create_teacher(
        "resnet18",
        num_classes=10,
        cifar_stem=True,
        channels=(16, 32, 64, 128),
        stem_type="deep",
        stem_width=8,
    )
    student = create_student(teacher, stem_stride=4)
    exact_t = measure_peak_memory(teacher, (3, 32, 32), convention="exact").peak_bytes
    exact_s = measure_peak_memory(student, (3, 32, 32), convention="exact").peak_bytes
    assert exact_t / exact_s >= 4


def test_save_load_round_trip(tmp_path):
    teacher = create_teacher("resnet18", num_classes=5, cifar_stem=True, **TINY_RESNET)
    student = create_student(teacher, stem_stride=4)
    for block in student.red_blocks.values():  # non-trivial BN statistics must survive too
        block.gate[1].running_mean.fill_(0.3)
    folder = save_classifier(
        student, tmp_path / "student", label_names=list("abcde"), model_card=card_for(student)
    )
    assert {p.name for p in folder.iterdir()} == {"config.json", "model.safetensors", "README.md"}
    config = read_classifier_config(folder)
    assert config["architecture"] == "resnet18" and config["label_names"] == list("abcde")
    assert config["redistill"]["stride_plan"] == {
        "stem_conv_stride": 4,
        "stem_pool_stride": 1,
        "stage_strides": [1, 2, 1, 1],
    }
    assert [b["tap"] for b in config["redistill"]["red_blocks"]] == downsampling_taps(student)
    loaded = load_classifier(folder)
    x = torch.randn(2, 3, 32, 32)
    student.eval()
    assert torch.allclose(loaded(x), student(x), atol=1e-6)
    assert read_stride_plan(loaded) == read_stride_plan(student)
    assert [f["reduction"] for f in loaded.feature_info] == [f["reduction"] for f in student.feature_info]
    # a plain timm teacher folder loads too
    plain = timm.create_model("resnet18", num_classes=3, **TINY_RESNET)
    reloaded = load_classifier(save_classifier(plain, tmp_path / "plain"))
    plain.eval()
    assert torch.allclose(reloaded(torch.ones(1, 3, 64, 64)), plain(torch.ones(1, 3, 64, 64)), atol=1e-6)


def test_load_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_classifier(tmp_path / "missing" / "folder")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_classifier(tmp_path / "empty")


class LocalHub:
    """A stand-in for huggingface_hub.HfApi that stores uploads in a local folder (no network)."""

    def __init__(self, root):
        self.root = root
        self.created = []

    def create_repo(self, repo_id, private=False, exist_ok=True, repo_type="model"):
        self.created.append((repo_id, private))
        return repo_id

    def upload_folder(
        self, repo_id, folder_path, commit_message="", ignore_patterns=(), repo_type="model", **kwargs
    ):
        import shutil

        target = self.root / repo_id
        shutil.copytree(folder_path, target, dirs_exist_ok=True)
        return str(target)


def test_push_to_hub_with_local_stand_in(tmp_path):
    teacher = create_teacher("resnet18", num_classes=4, cifar_stem=True, **TINY_RESNET)
    student = create_student(teacher, stem_stride=4)
    hub = LocalHub(tmp_path / "hub")
    push_classifier_to_hub(student, "me/tiny-redistill", private=True, api=hub)
    pushed = tmp_path / "hub" / "me" / "tiny-redistill"
    assert hub.created == [("me/tiny-redistill", True)]
    card = (pushed / "README.md").read_text()
    assert (
        card.startswith("---\n")
        and "pipeline_tag: image-classification" in card
        and "load_classifier" in card
    )
    assert "conv1:output" in card
    assert (
        json.loads((pushed / "config.json").read_text())["redistill"]["stride_plan"]["stem_conv_stride"] == 4
    )
    x = torch.randn(1, 3, 32, 32)
    student.eval()
    assert torch.allclose(load_classifier(pushed)(x), student(x), atol=1e-6)


RECIPES = sorted((__import__("pathlib").Path(__file__).resolve().parents[1] / "recipes").glob("cls_*.yaml"))
STL10_PAIRS = [
    ("cls_stl10_resnext18_teacher.yaml", "cls_stl10_resnext18_x4_red.yaml", 4),
    ("cls_stl10_mobilenetv2_teacher.yaml", "cls_stl10_mobilenetv2_x4_red.yaml", 4),
    ("cls_stl10_mobilenetv2_teacher.yaml", "cls_stl10_mobilenetv2_x8_red.yaml", 8),
    ("cls_stl10_mobilenetv3_small_teacher.yaml", "cls_stl10_mobilenetv3_small_x4_red.yaml", 4),
]


@pytest.mark.parametrize("recipe", RECIPES, ids=[r.name for r in RECIPES])
def test_classification_recipes_parse(recipe):
    from redistill_diffusion.classification.run import CLASSIFIER_ARGUMENTS
    from redistill_diffusion.config import parse_args
    from redistill_diffusion.distillers import distillation_options

    training, data, cls = parse_args(CLASSIFIER_ARGUMENTS, ["--recipe", str(recipe)])
    assert cls.distiller in ("none", "red") and not training.use_ema
    assert (cls.distiller == "none") == (cls.teacher_model_name_or_path is None)
    if (
        cls.distiller != "none"
    ):  # the recipe's options reach its method, and the documented --distiller red+kd
        for name in (cls.distiller, "red+kd"):
            assert set(distillation_options(name, cls)) <= {"red_alpha", "red_distance"}


@pytest.mark.parametrize("teacher_recipe,student_recipe,stem", STL10_PAIRS, ids=[p[1] for p in STL10_PAIRS])
def test_stl10_recipes_build_the_papers_models(teacher_recipe, student_recipe, stem):
    """The recipe strides give the reference pairs: total stride 16 kept, stem 4 or 8, at 128x128."""
    from redistill_diffusion.classification.run import CLASSIFIER_ARGUMENTS
    from redistill_diffusion.config import parse_args

    root = RECIPES[0].parent
    _, _, t_args = parse_args(CLASSIFIER_ARGUMENTS, ["--recipe", str(root / teacher_recipe)])
    _, data, s_args = parse_args(CLASSIFIER_ARGUMENTS, ["--recipe", str(root / student_recipe)])
    teacher = create_teacher(
        t_args.model_name_or_path, num_classes=10, cifar_stem=t_args.cifar_stem, strides=t_args.model_strides
    )
    student = create_student(teacher, strides=s_args.strides)
    assert read_stride_plan(teacher).total_stride == read_stride_plan(student).total_stride == 16
    assert read_stride_plan(student).stem_stride == stem
    assert _features(student, data.resolution).shape[-2:] == (8, 8)


def test_one_stride_notation_for_plans_and_cards():
    """The card's strides are StridePlan.notation: a stride of 10 or more is bracketed, not run together."""
    from redistill_diffusion.classification.hub import _format_plan
    from redistill_diffusion.classification.surgery import StridePlan

    plan = StridePlan(16, None, (1, 12, 2))
    assert plan.notation() == "16-1(12)2"
    assert _format_plan(plan.to_dict()) == "16-1(12)2"
    assert _format_plan(StridePlan(2, 2, (1, 2, 2, 2)).to_dict()) == "2-21222"
    assert _format_plan(None) == "-"
