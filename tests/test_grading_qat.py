"""Lab 07 exercises (fake_quant_ste, ema_range, export_weights): references agree with the library,
solutions score full marks, stubs are "not attempted", typical wrong solutions each get their own hint."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from grading_support import define
from grading_support import sol as _sol

from quantlab.grading import REGISTRY, check, run_exercise
from quantlab.grading.checks_qat import ema_range_reference, export_weights_reference, fake_quant_ste_reference

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")

IDS = ("fake_quant_ste", "ema_range", "export_weights")


def test_registered_for_lab_07_with_forbids():
    for name in IDS:
        ex = REGISTRY[name]
        assert ex.lab == "07" and len(ex.prepared_cases()) >= 5 and ex.forbids
    assert "torch.fake_quantize_per_tensor_affine" in REGISTRY["fake_quant_ste"].forbids
    assert "quantlab.linear.FakeQuantizeSTE" in REGISTRY["fake_quant_ste"].forbids
    assert "quantlab.observers.MovingAverageMinMaxObserver" in REGISTRY["ema_range"].forbids
    assert "quantlab.linear.quantize" in REGISTRY["export_weights"].forbids


@pytest.mark.parametrize("name", IDS)
def test_solution_scores_full_marks_and_stub_is_not_attempted(name, capsys):
    res = check(define(_sol.SOLUTIONS[name], name))
    assert res.status == "passed", res.feedback
    assert run_exercise(define(_sol.STUBS[name], name)).status == "not attempted"


def test_references_agree_with_the_library():
    from quantlab.granularity import QParams
    from quantlab.observers import MovingAverageMinMaxObserver
    from quantlab.qat import fake_quant

    r = torch.linspace(-2, 3, 41, requires_grad=True)
    out = fake_quant(r, QParams(torch.tensor(0.1), torch.tensor(5), 0, 31))
    out.backward(torch.arange(41.0) % 7 + 1)
    values, grad = fake_quant_ste_reference(r, 0.1, 5, 0, 31)
    assert np.allclose(values, out.detach().numpy(), atol=1e-6) and np.array_equal(grad, r.grad.numpy())
    obs = MovingAverageMinMaxObserver(0.2)
    x1, x2 = torch.tensor([0.0, 1.0]), torch.tensor([-1.0, 4.0])
    obs.update(x1)
    obs.update(x2)
    expect = ema_range_reference(*ema_range_reference(None, None, x1, 0.2), x2, 0.2)
    assert expect == pytest.approx((float(obs.min_val), float(obs.max_val)))
    from quantlab.linear import quantize, scale_zero_point

    w = torch.randn(4, 9)
    q, s, z = export_weights_reference(w, -0.7, 1.9, 0, 255)
    s_l, z_l = scale_zero_point(-0.7, 1.9, 0, 255)
    assert s == pytest.approx(float(s_l)) and z == int(z_l)
    assert np.array_equal(q, quantize(w, s_l, z_l, 0, 255).numpy()) and q.dtype == np.uint8


FQ = '''import torch
def fake_quant_ste(r, s, z, q_min, q_max):
    return FQ.apply(r, torch.as_tensor(s, dtype=r.dtype), torch.as_tensor(z, dtype=r.dtype), q_min, q_max)
class FQ(torch.autograd.Function):
    @staticmethod
    def forward(ctx, r, s, z, q_min, q_max):
        q = torch.round(r / s + z)
        ctx.save_for_backward((q >= q_min) & (q <= q_max))
        return {forward}
    @staticmethod
    def backward(ctx, g):
        (inside,) = ctx.saved_tensors
        return {backward}, None, None, None, None
'''
FWD_OK = "s * (torch.clamp(q, q_min, q_max) - z)"
EMA = "def ema_range(r_min, r_max, x, c):\n    lo, hi = float(x.min()), float(x.max())\n" \
      "    if r_min is None:\n        return lo, hi\n    return {}\n"
EXP = '''import numpy as np
def export_weights(w, r_min, r_max, q_min, q_max):
    w = np.asarray(w, dtype=np.float32)
    r_min, r_max = min(r_min, 0.0), max(r_max, 0.0)
    s = float(np.float32((r_max - r_min) / (q_max - q_min)))
    z = int(np.clip(q_min - np.round(r_min / s), q_min, q_max))
    q = {q}
    return q.astype({dtype}), s, z
'''
Q_OK = "np.clip(np.round(w / np.float32(s) + z), q_min, q_max)"
DT_OK = "np.uint8 if q_max > 127 else np.int8"

WRONG = [
    ("fake_quant_ste", FQ.format(forward=FWD_OK, backward="g"), "passes everywhere"),
    ("fake_quant_ste", FQ.format(forward=FWD_OK, backward="g * 0"), "zero everywhere"),
    ("fake_quant_ste", FQ.format(forward="s * torch.clamp(torch.round(r / s), q_min, q_max)",
                                 backward="g * inside"), "forgot z"),
    ("fake_quant_ste", "import torch\ndef fake_quant_ste(r, s, z, q_min, q_max):\n"
     "    with torch.no_grad():\n"
     "        return s * (torch.clamp(torch.round(r / s + z), q_min, q_max) - z)\n", "no gradient"),
    ("ema_range", EMA.format("lo + c * (r_min - lo), hi + c * (r_max - hi)"), "wrong way round"),
    ("ema_range", EMA.format("min(r_min, lo), max(r_max, hi)"), "running min/max"),
    ("export_weights", EXP.format(q="np.clip(np.round(w / np.float32(s)), q_min, q_max)", dtype=DT_OK),
     "forgot z"),
    ("export_weights", EXP.format(q="np.clip(np.floor(w / np.float32(s) + z), q_min, q_max)", dtype=DT_OK),
     "not floor"),
    ("export_weights", EXP.format(q=Q_OK, dtype="np.int32"), "8-bit integers"),
    ("export_weights", EXP.format(q=Q_OK, dtype="np.float32"), "8-bit integers"),
]


@pytest.mark.parametrize("name,src,hint", WRONG, ids=[f"{w[0]}:{w[2]}" for w in WRONG])
def test_wrong_solution_gets_its_hint(name, src, hint):
    res = run_exercise(define(src, name))
    assert res.status == "failed" and res.points == 0
    assert hint in res.feedback, res.feedback


def test_catalogue_covers_the_lab_07_exercises():
    assert {w[0] for w in WRONG} == set(IDS) == set(_sol.CATALOGUED_ELSEWHERE)


@pytest.mark.parametrize("body", ["return float('nan')", "return r.detach().numpy()", "return None",
                                  "raise ValueError('boom')", "return torch.zeros(3)"])
def test_nonsense_fake_quant_output_fails_with_a_reason(body):
    src = f"import torch\ndef fake_quant_ste(r, s, z, q_min, q_max):\n    {body}\n"
    res = run_exercise(define(src, "fake_quant_ste"))
    assert res.status == "failed" and res.feedback
