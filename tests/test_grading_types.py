"""NumPy/torch type mix-ups (issue 7 §2): their own hint, and correct torch-based solutions pass everything."""

from __future__ import annotations

import pytest
from grading_support import define as _define
from grading_support import load_fixture

from quantlab.grading import REGISTRY, run_exercise
from quantlab.grading.hints import describe_inputs, is_type_mixup

pytestmark = [pytest.mark.filterwarnings("ignore::RuntimeWarning"),
              pytest.mark.filterwarnings("ignore::DeprecationWarning")]  # NumPy 2 meets torch tensors

TORCH_SOLUTIONS = load_fixture("torch_solutions").TORCH_SOLUTIONS
_PRELUDE = "import numpy as np\nimport torch\n"


def define(src: str, name: str):
    return _define(src, name, prelude=_PRELUDE)


def test_every_exercise_has_a_torch_solution():
    assert set(TORCH_SOLUTIONS) == set(REGISTRY)


@pytest.mark.parametrize("name", list(TORCH_SOLUTIONS))
def test_torch_solution_converting_consistently_passes(name):
    src = TORCH_SOLUTIONS[name]
    assert "torch.as_tensor" in src and "np." not in src  # really torch-flavoured
    res = run_exercise(define(src, name))
    assert res.status == "passed" and res.points == REGISTRY[name].points, res.feedback


def test_issue_example_names_the_numpy_inputs():
    """The issue's dequantize: right formula, q converted, s and z left as NumPy arrays."""
    fn = define("def dequantize(q, s, z):\n    return s * (torch.as_tensor(q, dtype=torch.float32) - z)\n",
                "dequantize")
    res = run_exercise(fn)
    assert res.status == "failed"
    case = next(c for c in res.cases if not c.passed)
    assert case.name == "per-channel s, z of shape (C, 1)"
    assert "'numpy.ndarray' and 'Tensor'" in case.reason
    assert case.hint.startswith("your code mixes NumPy arrays and torch tensors")
    assert "q (int32, shape (3, 4)), s (float32, shape (3, 1)) and z (int64, shape (3, 1)) as NumPy arrays" \
        in case.hint
    assert "q = torch.as_tensor(q)" in case.hint
    assert "s * (q - z)" not in case.hint  # not the formula hint: the formula was right


@pytest.mark.parametrize("body,error", [
    ("torch.clamp(torch.round(r / s + z), q_min, q_max)", "must be Tensor, not numpy.ndarray"),
    ("torch.as_tensor(r / s + z).round().astype(int)", "'Tensor' object has no attribute 'astype'"),
    ("torch.stack([np.round(r / s + z)])", "expected Tensor as element 0"),
])
def test_quantize_mixups_get_the_type_hint(body, error):
    res = run_exercise(define(f"def quantize(r, s, z, q_min, q_max):\n    return {body}\n", "quantize"))
    first = next(c for c in res.cases if not c.passed)
    assert error in first.reason
    assert "mixes NumPy arrays and torch tensors" in first.hint
    assert "r (float32, shape (7,)) as a NumPy array" in first.hint
    assert "s (float), z (int), q_min (int) and q_max (int) as Python numbers" in first.hint


def test_unreadable_returned_tensor_gets_the_type_hint():
    fn = define("def dequantize(q, s, z):\n    return (s * (torch.as_tensor(q) - z)).to(torch.bfloat16)\n",
                "dequantize")
    first = next(c for c in run_exercise(fn).cases if not c.passed)
    assert "bfloat16" in first.reason and first.hint.startswith("you returned a torch tensor")


def test_low_precision_tensor_gets_the_precision_hint():
    fn = define("def quantize_histogram(p, n_levels):\n"
                "    p = torch.as_tensor(p, dtype=torch.float16)\n"
                "    w = len(p) // n_levels\n"
                "    k = torch.clamp(torch.arange(len(p)) // w, max=n_levels - 1)\n"
                "    mass = torch.zeros(n_levels, dtype=p.dtype).index_add_(0, k, p)\n"
                "    count = torch.zeros(n_levels, dtype=p.dtype).index_add_(0, k, (p > 0).to(p.dtype))\n"
                "    return torch.where(p > 0, mass[k] / torch.clamp(count[k], min=1), torch.zeros_like(p))\n",
                "quantize_histogram")
    res = run_exercise(fn)
    first = next(c for c in res.cases if not c.passed)
    assert "float16 tensor" in first.hint and "p arrived as a float64 NumPy array" in first.hint


def test_other_errors_keep_their_own_hints():
    assert not is_type_mixup(TypeError("unsupported operand type(s) for +: 'int' and 'str'"))
    assert not is_type_mixup(ValueError("operands could not be broadcast together"))
    fn = define("def quantize(r, s, z, q_min, q_max):\n    return np.clip(np.round(r / float(s) + int(z)), "
                "q_min, q_max)\n", "quantize")
    res = run_exercise(fn)  # float(array) -> TypeError that is about broadcasting, not torch
    assert "broadcast" in res.feedback and "torch" not in res.feedback


def test_hidden_inputs_are_described_without_shapes():
    import numpy as np

    text = describe_inputs(lambda w, axis: 0, (np.zeros((3, 5), np.float32), 1), detail=False)
    assert text == "w as a NumPy array; axis as a Python number"


def test_list_of_python_int_words_is_read_exactly():
    """A correct pack_sign_bits building each word as a Python int and returning a list: words >= 2^63 next to
    small ones must not become float64 (NumPy's int64 + uint64 promotion) and fail as "returned dtype float64"."""
    fn = define("def pack_sign_bits(x):\n    words = []\n    for j in range(0, len(x), 64):\n        w = 0\n"
                "        for i, v in enumerate(x[j:j + 64]):\n            if v == -1:\n                w |= 1 << i\n"
                "        words.append(w)\n    return words\n", "pack_sign_bits")
    res = run_exercise(fn)
    assert res.status == "passed", res.feedback
    wrong = define("def pack_sign_bits(x):\n    return [2**63 + 1] * ((len(x) + 63) // 64)\n", "pack_sign_bits")
    res = run_exercise(wrong)
    assert res.status == "failed" and "word 0 differs" in res.feedback and "float" not in res.feedback, res.feedback
