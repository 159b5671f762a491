"""Distiller losses on hand-made tensors: exact values, gradient flow, composites and errors."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from redistill_diffusion.distillers import (
    Distiller,
    KDDistiller,
    available_distillers,
    build_distiller,
    distiller_options,
    option_defaults,
)
from redistill_diffusion.taps import FeatureTaps, match_by_resolution, probe_shapes

S, T = "student.block:output", "teacher.block:output"


def run(distiller, s_out=None, t_out=None, s_feats=None, t_feats=None, target=None):
    return distiller(
        student_output=s_out,
        teacher_output=t_out,
        student_features=s_feats or {},
        teacher_features=t_feats or {},
        target=target,
    )


def red_loss(s, t, **options):
    return run(build_distiller("red", pairs=[(S, T)], **options), s_feats={S: s}, t_feats={T: t})["red"]


# --- vanilla / student+ ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["vanilla", "student_plus"])
def test_teacherless_methods_return_no_loss(name):
    distiller = build_distiller(name, pairs=[(S, T)])
    assert isinstance(distiller, Distiller)
    assert distiller.requires_teacher is False
    assert distiller.student_taps() == [] and distiller.teacher_taps() == []
    assert run(distiller, s_out=torch.ones(2, 3)) == {}


# --- RED ---------------------------------------------------------------------------------------------


def test_red_cosine_exact_values():
    torch.manual_seed(0)
    s = torch.randn(2, 3, 4, 4)
    assert red_loss(s, s.clone()).item() == pytest.approx(0.0, abs=1e-6)
    assert red_loss(s, -s, red_alpha=1.5).item() == pytest.approx(2 * 1.5, abs=1e-6)
    # Different channel counts are fine: only the channel-mean maps are compared.
    teacher_5ch = s.mean(dim=1, keepdim=True).expand(2, 5, 4, 4) * 3.0  # same map up to scale
    assert red_loss(s, teacher_5ch).item() == pytest.approx(0.0, abs=1e-6)


def test_red_mse_exact_value():
    s = torch.cat([torch.full((1, 1, 2, 2), 1.0), torch.full((1, 1, 2, 2), 3.0)], dim=1)  # channel mean 2
    t = torch.zeros(1, 4, 2, 2)
    assert red_loss(s, t, red_distance="mse", red_alpha=0.5).item() == pytest.approx(0.5 * 4.0)


def test_red_is_mean_over_pairs_with_per_pair_alpha():
    s1 = torch.randn(2, 3, 4, 4)
    m_s2 = torch.tensor([1.0, 0.0, 0.0, 0.0]).view(1, 1, 2, 2)  # orthogonal maps: cosine distance 1
    m_t2 = torch.tensor([0.0, 1.0, 0.0, 0.0]).view(1, 1, 2, 2)
    pairs = [("s1", "t1"), ("s2", "t2")]
    distiller = build_distiller("red", pairs=pairs, red_alpha=[0.5, 3.0])
    loss = run(
        distiller,
        s_feats={"s1:output": s1, "s2:output": m_s2.expand(2, 2, 2, 2)},
        t_feats={"t1:output": -s1, "t2:output": m_t2.expand(2, 6, 2, 2)},
    )
    assert set(loss) == {"red"}
    assert loss["red"].item() == pytest.approx((0.5 * 2.0 + 3.0 * 1.0) / 2, abs=1e-6)


def test_red_validates_alpha_distance_and_sizes():
    with pytest.raises(ValueError, match="one per pair"):
        build_distiller("red", pairs=[("a", "b"), ("c", "d")], red_alpha=[1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="red_distance"):
        build_distiller("red", pairs=[("a", "b")], red_distance="l1")
    with pytest.raises(ValueError, match="spatial"):
        build_distiller(
            "red",
            pairs=[("a", "b")],
            student_shapes={"a": (1, 3, 8, 8)},
            teacher_shapes={"b:output": (1, 3, 4, 4)},
        )
    with pytest.raises(ValueError, match="unknown student tap"):
        build_distiller(
            "red", pairs=[("x", "b")], student_shapes={"a": (1, 3, 4, 4)}, teacher_shapes={"b": (1, 3, 4, 4)}
        )
    with pytest.raises(ValueError, match="spatial"):
        red_loss(torch.randn(1, 3, 8, 8), torch.randn(1, 3, 4, 4))
    with pytest.raises(KeyError, match="not captured"):
        run(build_distiller("red", pairs=[(S, T)]), s_feats={S: torch.ones(1, 1, 2, 2)}, t_feats={})


# --- output methods ------------------------------------------------------------------------------------


def test_output_mse_value_and_shape_check():
    distiller = build_distiller("output_mse", output_mse_weight=0.5)
    loss = run(distiller, s_out=torch.zeros(2, 3, 4, 4), t_out=torch.full((2, 3, 4, 4), 2.0))
    assert loss["output_mse"].item() == pytest.approx(0.5 * 4.0)
    with pytest.raises(ValueError, match="differ in shape"):
        run(distiller, s_out=torch.zeros(2, 3, 4, 4), t_out=torch.zeros(2, 3, 8, 8))


def test_kd_matches_hand_computation():
    # T = 2: teacher logits [2 ln 3, 0] -> softmax(z/T) = [3/4, 1/4]; student [0, 0] -> [1/2, 1/2].
    student = torch.tensor([[0.0, 0.0]])
    teacher = torch.tensor([[2 * math.log(3.0), 0.0]])
    expected = (0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5)) * 2**2
    loss = run(build_distiller("kd"), s_out=student, t_out=teacher)["kd"]
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    weighted = run(build_distiller("kd", kd_weight=3.0), s_out=student, t_out=teacher)["kd"]
    assert weighted.item() == pytest.approx(3 * expected, rel=1e-5)
    with pytest.raises(ValueError, match="logits"):
        run(build_distiller("kd"), s_out=torch.zeros(1, 2, 2, 2), t_out=torch.zeros(1, 2, 2, 2))


def _dkd_reference(z_s, z_t, labels, alpha, beta, temp):
    """DKD written out per sample with plain Python floats (Zhao et al. 2022, eqs. 1-7)."""
    tckd_sum = nckd_sum = 0.0
    for row_s, row_t, gt in zip(z_s.tolist(), z_t.tolist(), labels.tolist()):

        def probs(row):
            exps = [math.exp(v / temp) for v in row]
            return [e / sum(exps) for e in exps]

        p_s, p_t = probs(row_s), probs(row_t)
        b_s, b_t = [p_s[gt], 1 - p_s[gt]], [p_t[gt], 1 - p_t[gt]]
        tckd_sum += sum(bt * math.log(bt / bs) for bs, bt in zip(b_s, b_t))
        others = [j for j in range(len(row_s)) if j != gt]
        q_s = [p_s[j] / (1 - p_s[gt]) for j in others]
        q_t = [p_t[j] / (1 - p_t[gt]) for j in others]
        nckd_sum += sum(qt * math.log(qt / qs) for qs, qt in zip(q_s, q_t))
    n = len(labels)
    return alpha * tckd_sum / n * temp**2, beta * nckd_sum / n * temp**2


def test_dkd_matches_independent_reference():
    z_s = torch.tensor([[1.0, -0.5, 0.3, 2.0], [0.2, 0.1, -1.0, 0.4], [-0.3, 1.2, 0.8, 0.0]])
    z_t = torch.tensor([[2.5, 0.0, -0.7, 1.0], [-0.4, 1.5, 0.3, 0.2], [0.9, 0.9, -0.2, 1.1]])
    labels = torch.tensor([0, 1, 3])
    loss = run(build_distiller("dkd"), s_out=z_s, t_out=z_t, target=labels)
    tckd, nckd = _dkd_reference(z_s, z_t, labels, alpha=1.0, beta=8.0, temp=4.0)
    assert loss["dkd_tckd"].item() == pytest.approx(tckd, rel=1e-5)
    assert loss["dkd_nckd"].item() == pytest.approx(nckd, rel=1e-5)
    custom = run(
        build_distiller("dkd", dkd_alpha=0.5, dkd_beta=2.0, dkd_temperature=1.0),
        s_out=z_s,
        t_out=z_t,
        target=labels,
    )
    tckd, nckd = _dkd_reference(z_s, z_t, labels, alpha=0.5, beta=2.0, temp=1.0)
    assert custom["dkd_tckd"].item() == pytest.approx(tckd, rel=1e-5)
    assert custom["dkd_nckd"].item() == pytest.approx(nckd, rel=1e-5)
    # One-hot (mixup-style) targets reduce to their argmax.
    soft = run(build_distiller("dkd"), s_out=z_s, t_out=z_t, target=F.one_hot(labels, 4).float())
    assert soft["dkd_nckd"].item() == pytest.approx(loss["dkd_nckd"].item())


def test_dkd_decomposes_classic_kd():
    """The DKD paper's identity, per sample: KD = TCKD + (1 - p_t[gt]) * NCKD (with alpha = beta = 1)."""
    z_s, z_t, label = torch.tensor([[0.3, -1.0, 2.0]]), torch.tensor([[1.0, 0.5, -0.5]]), torch.tensor([2])
    dkd = run(build_distiller("dkd", dkd_beta=1.0, dkd_temperature=2.0), s_out=z_s, t_out=z_t, target=label)
    kd = run(build_distiller("kd", kd_temperature=2.0), s_out=z_s, t_out=z_t)["kd"]
    p_t_gt = torch.softmax(z_t / 2.0, dim=1)[0, 2].item()
    assert kd.item() == pytest.approx(
        dkd["dkd_tckd"].item() + (1 - p_t_gt) * dkd["dkd_nckd"].item(), rel=1e-5
    )


def test_dkd_needs_target():
    distiller = build_distiller("dkd")
    assert distiller.requires_target
    with pytest.raises(ValueError, match="target"):
        run(distiller, s_out=torch.zeros(2, 3), t_out=torch.zeros(2, 3))
    with pytest.raises(ValueError, match="one class index"):
        run(
            distiller,
            s_out=torch.zeros(2, 3),
            t_out=torch.zeros(2, 3),
            target=torch.zeros(3, dtype=torch.long),
        )


# --- AT ------------------------------------------------------------------------------------------------


def test_at_exact_value_and_invariances():
    s = torch.tensor([1.0, 0.0]).view(1, 1, 1, 2)  # attention [1, 0]
    t = torch.tensor([0.0, 1.0]).view(1, 1, 1, 2).expand(1, 2, 1, 2)  # attention [0, 1], 2 channels
    distiller = build_distiller("at", pairs=[(S, T)])
    # mean((1-0)^2, (0-1)^2) = 1, times the default weight 1000.
    assert run(distiller, s_feats={S: s}, t_feats={T: t})["at"].item() == pytest.approx(1000.0)
    # Attention maps are L2-normalised: scaling a feature changes nothing; identical maps give 0.
    assert run(distiller, s_feats={S: 5 * s}, t_feats={T: t})["at"].item() == pytest.approx(1000.0)
    assert (
        run(build_distiller("at", pairs=[(S, T)], at_weight=1.0), s_feats={S: t}, t_feats={T: 2 * t})[
            "at"
        ].item()
        == 0.0
    )


def test_at_resizes_only_when_needed():
    torch.manual_seed(0)
    s, t = torch.randn(2, 3, 8, 8), torch.randn(2, 5, 4, 4)
    distiller = build_distiller("at", pairs=[(S, T)], at_weight=1.0)
    resized = run(distiller, s_feats={S: s}, t_feats={T: t})["at"]
    same_size = run(distiller, s_feats={S: F.adaptive_avg_pool2d(s, 4)}, t_feats={T: t})["at"]
    assert resized.item() == pytest.approx(same_size.item(), rel=1e-6)


# --- FitNet --------------------------------------------------------------------------------------------


def test_fitnet_builds_regressors_from_shapes_and_trains_them():
    torch.manual_seed(0)
    shapes_s, shapes_t = {S: torch.Size([1, 3, 4, 4])}, {T: torch.Size([1, 5, 4, 4])}
    distiller = build_distiller(
        "fitnet", pairs=[(S, T)], student_shapes=shapes_s, teacher_shapes=shapes_t, fitnet_weight=2.0
    )
    (regressor,) = distiller.regressors.values()
    assert (regressor.in_channels, regressor.out_channels, regressor.kernel_size) == (3, 5, (1, 1))
    assert len(list(distiller.parameters())) == 2  # exists before any optimizer is created

    s, t = torch.randn(2, 3, 4, 4, requires_grad=True), torch.randn(2, 5, 4, 4)
    loss = run(distiller, s_feats={S: s}, t_feats={T: t})["fitnet"]
    assert loss.item() == pytest.approx(2.0 * F.mse_loss(regressor(s), t).item(), rel=1e-6)
    loss.backward()
    assert regressor.weight.grad is not None and regressor.weight.grad.abs().sum() > 0
    assert s.grad is not None and s.grad.abs().sum() > 0


def test_fitnet_shape_errors():
    with pytest.raises(ValueError, match="student_shapes and teacher_shapes"):
        build_distiller("fitnet", pairs=[(S, T)])
    with pytest.raises(ValueError, match="spatial"):
        build_distiller(
            "fitnet", pairs=[(S, T)], student_shapes={S: (1, 3, 8, 8)}, teacher_shapes={T: (1, 3, 4, 4)}
        )
    distiller = build_distiller(
        "fitnet", pairs=[(S, T)], student_shapes={S: (1, 3, 4, 4)}, teacher_shapes={T: (1, 3, 4, 4)}
    )
    with pytest.raises(ValueError, match="spatial"):
        run(distiller, s_feats={S: torch.randn(1, 3, 8, 8)}, t_feats={T: torch.randn(1, 3, 4, 4)})


# --- composites -----------------------------------------------------------------------------------------


def test_composite_is_average_of_components():
    torch.manual_seed(0)
    s_out, t_out = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    feats_s, feats_t = {S: torch.randn(2, 3, 4, 4)}, {T: torch.randn(2, 6, 4, 4)}
    red = run(build_distiller("red", pairs=[(S, T)], red_alpha=2.0), s_out, t_out, feats_s, feats_t)["red"]
    mse = run(build_distiller("output_mse"), s_out, t_out, feats_s, feats_t)["output_mse"]
    both = build_distiller("red+output_mse", pairs=[(S, T)], red_alpha=2.0)
    assert both.requires_teacher and not both.requires_target
    assert both.student_taps() == [S] and both.teacher_taps() == [T]
    losses = run(both, s_out, t_out, feats_s, feats_t)
    assert set(losses) == {"red", "output_mse"}
    assert losses["red"].item() == pytest.approx(red.item() / 2)
    assert losses["output_mse"].item() == pytest.approx(mse.item() / 2)
    assert sum(losses.values()).item() == pytest.approx((red.item() + mse.item()) / 2)


def test_composite_red_kd_and_dkd_flags():
    logits_s, logits_t = torch.randn(4, 10), torch.randn(4, 10)
    feats_s, feats_t = {S: torch.randn(4, 8, 2, 2)}, {T: torch.randn(4, 16, 2, 2)}
    red_kd = build_distiller("red+kd", pairs=[(S, T)], kd_temperature=2.0)
    losses = run(red_kd, logits_s, logits_t, feats_s, feats_t)
    kd = run(build_distiller("kd"), logits_s, logits_t)["kd"]
    assert losses["kd"].item() == pytest.approx(kd.item() / 2)
    assert build_distiller("red+dkd", pairs=[(S, T)]).requires_target
    three = build_distiller("red+at+output_mse", pairs=[(S, T)])
    losses = run(three, logits_s, logits_t, feats_s, feats_t)
    at = run(build_distiller("at", pairs=[(S, T)]), logits_s, logits_t, feats_s, feats_t)["at"]
    assert losses["at"].item() == pytest.approx(at.item() / 3, rel=1e-6)


def test_composite_with_fitnet_exposes_regressor_parameters():
    shapes = {"s": (1, 3, 4, 4)}, {"t": (1, 5, 4, 4)}
    distiller = build_distiller(
        "red+fitnet", pairs=[("s", "t")], student_shapes=shapes[0], teacher_shapes=shapes[1]
    )
    assert len(list(distiller.parameters())) == 2


# --- gradient flow -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name", ["output_mse", "kd", "dkd", "red", "fitnet", "at", "red+output_mse", "red+kd", "red+fitnet"]
)
def test_gradients_reach_only_the_student(name):
    torch.manual_seed(0)
    classification = name in ("kd", "dkd", "red+kd")
    out_shape = (4, 6) if classification else (4, 3, 4, 4)
    s_out, t_out = torch.randn(out_shape, requires_grad=True), torch.randn(out_shape, requires_grad=True)
    s_feat, t_feat = torch.randn(4, 3, 4, 4, requires_grad=True), torch.randn(4, 5, 4, 4, requires_grad=True)
    distiller = build_distiller(
        name, pairs=[(S, T)], student_shapes={S: s_feat.shape}, teacher_shapes={T: t_feat.shape}
    )
    losses = run(distiller, s_out, t_out, {S: s_feat}, {T: t_feat}, target=torch.tensor([0, 1, 2, 5]))
    assert losses and all(v.ndim == 0 for v in losses.values())
    sum(losses.values()).backward()
    assert t_out.grad is None and t_feat.grad is None
    uses_features = any(m in name for m in ("red", "fitnet", "at"))
    uses_outputs = any(m in name for m in ("output_mse", "kd"))
    assert (s_feat.grad is not None and s_feat.grad.abs().sum() > 0) == uses_features
    assert (s_out.grad is not None and s_out.grad.abs().sum() > 0) == uses_outputs


# --- builder ---------------------------------------------------------------------------------------------


def test_builder_errors_and_options():
    assert {"vanilla", "student_plus", "output_mse", "fitnet", "at", "red", "kd", "dkd"} <= set(
        available_distillers()
    )
    with pytest.raises(ValueError, match="Unknown distiller 'rde'.*red"):
        build_distiller("rde")
    with pytest.raises(ValueError, match="does not take option.*kd_temperature"):
        build_distiller("red", pairs=[(S, T)], kd_temperature=2.0)
    with pytest.raises(ValueError, match="needs at least one"):
        build_distiller("red")
    with pytest.raises(ValueError, match="cannot be combined"):
        build_distiller("vanilla+kd")
    with pytest.raises(ValueError, match="twice"):
        build_distiller("kd+kd")
    with pytest.raises(ValueError, match="kd_temperature must be positive"):
        build_distiller("kd", kd_temperature=0)
    # Options left at None (unset CLI flags) count as not given.
    assert build_distiller("kd", red_alpha=None, kd_temperature=None).temperature == 2.0
    # A method's options are its dataclass's fields, which it reads its values from when built directly.
    assert option_defaults(KDDistiller) == {"kd_temperature": 2.0, "kd_weight": 1.0}
    assert KDDistiller(kd_temperature=3.0).temperature == 3.0
    with pytest.raises(TypeError, match="kd_temprature"):
        KDDistiller(kd_temprature=3.0)
    assert distiller_options("red+kd") == {
        "red_alpha": 1.0,
        "red_distance": "cosine",
        "kd_temperature": 2.0,
        "kd_weight": 1.0,
    }
    assert build_distiller(" RED + Output_MSE ", pairs=[(S, T)]).name == "red+output_mse"


def test_end_to_end_with_feature_taps():
    """Pairs and shapes from taps.probe_shapes / match_by_resolution feed the builder directly."""
    torch.manual_seed(0)
    teacher = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 16, 3, stride=2, padding=1))
    student = nn.Sequential(nn.Conv2d(3, 4, 3, stride=2, padding=1), nn.Conv2d(4, 16, 3, padding=1))
    x = torch.randn(2, 3, 8, 8)
    s_shapes = probe_shapes(student, ["0"], x)
    t_shapes = probe_shapes(teacher, ["0", "1"], x)
    pairs = match_by_resolution(s_shapes, t_shapes)
    assert pairs == [("0:output", "1:output")]
    distiller = build_distiller("red+fitnet", pairs=pairs, student_shapes=s_shapes, teacher_shapes=t_shapes)
    with (
        FeatureTaps(student, distiller.student_taps()) as s_taps,
        FeatureTaps(teacher, distiller.teacher_taps()) as t_taps,
    ):
        s_out = student(x)
        with torch.no_grad():
            t_out = teacher(x)
    losses = run(distiller, s_out, t_out, s_taps.features, t_taps.features)
    assert set(losses) == {"red", "fitnet"} and all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    assert student[0].weight.grad.abs().sum() > 0
