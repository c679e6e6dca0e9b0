"""Lab 08 exercises (quantlab/grading/checks_binary.py): reference solutions pass, the usual mistakes each fail with
their own hint, hostile code is a failure with a reason; the references agree with independent computations."""

from __future__ import annotations

import numpy as np
import pytest
from grading_support import define

from quantlab.grading import REGISTRY, run_exercise
from quantlab.packing import pack_signs

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")

IDS = ("pack_sign_bits", "xnor_popcount_dot", "binarize_with_alpha")


PACK = "import numpy as np\ndef pack_sign_bits(x):\n{}\n"
DOT = "import numpy as np\ndef xnor_popcount_dot(a_words, w_words, K):\n{}\n"
ALPHA = "import numpy as np\ndef binarize_with_alpha(w):\n{}\n"
_PC = "    pc = sum(bin(int(v)).count('1') for v in np.bitwise_xor(a_words, w_words))\n"
_BITS = ("    K = len(x)\n    words = np.zeros((K + 63) // 64, dtype=np.uint64)\n"
         "    for k in range(K):\n        if {cond}:\n"
         "            words[k // 64] |= np.uint64(1) << np.uint64({bit})\n")

GOOD = {
    "pack_sign_bits": PACK.format(_BITS.format(cond="x[k] == -1", bit="k % 64") + "    return words"),
    "xnor_popcount_dot": DOT.format(_PC + "    return K - 2 * pc"),
    "binarize_with_alpha": ALPHA.format("    a = np.abs(w).mean(axis=tuple(range(1, w.ndim)), keepdims=True)\n"
                                        "    return a * np.where(w >= 0, 1.0, -1.0)"),
}

WRONG = [
    ("pack_sign_bits", PACK.format(_BITS.format(cond="x[k] == 1", bit="k % 64") + "    return words"),
     "inverted"),
    ("pack_sign_bits", PACK.format(_BITS.format(cond="x[k] == -1", bit="63 - k % 64") + "    return words"),
     "bit order"),
    ("pack_sign_bits", PACK.format(_BITS.format(cond="x[k] == -1", bit="k % 64").replace("(K + 63) // 64", "K // 64")
                                   .replace("for k in range(K)", "for k in range(K // 64 * 64)") + "    return words"),
     "forgot the padding"),
    ("xnor_popcount_dot", DOT.format(_PC + "    return K - pc"), "not K - popcount"),
    ("xnor_popcount_dot", DOT.format(_PC + "    return 2 * pc - K"), "sign is flipped"),
    ("xnor_popcount_dot", DOT.format(_PC + "    return 64 * len(a_words) - 2 * pc"), "counted the padding"),
    ("binarize_with_alpha", ALPHA.format("    return np.abs(w).mean(axis=tuple(range(1, w.ndim)), keepdims=True)"
                                         " * np.sign(w)"), "sign(0)"),
    ("binarize_with_alpha", ALPHA.format("    return np.abs(w).mean(axis=0, keepdims=True) * np.where(w >= 0, 1, -1)"),
     "wrong axis"),
    ("binarize_with_alpha", ALPHA.format("    return np.abs(w).mean() * np.where(w >= 0, 1.0, -1.0)"),
     "one α for the whole tensor"),
    ("binarize_with_alpha", ALPHA.format("    return np.abs(w).max(axis=tuple(range(1, w.ndim)), keepdims=True)"
                                         " * np.where(w >= 0, 1.0, -1.0)"), "not max"),
    ("binarize_with_alpha", ALPHA.format("    return np.where(w >= 0, 1.0, -1.0)"), "multiply by α"),
]


def test_registered_in_lab_08_with_forbids():
    for i in IDS:
        ex = REGISTRY[i]
        assert ex.lab == "08" and ex.forbids and len(ex.prepared_cases()) >= 4
    assert "quantlab.packing.pack_signs" in REGISTRY["pack_sign_bits"].forbids
    assert "quantlab.binary.binarize_weights" in REGISTRY["binarize_with_alpha"].forbids


@pytest.mark.parametrize("name", IDS)
def test_good_solution_passes(name):
    res = run_exercise(define(GOOD[name], name))
    assert res.status == "passed", res.feedback


@pytest.mark.parametrize("name,src,hint", WRONG, ids=[f"{w[0]}:{w[2]}" for w in WRONG])
def test_wrong_solution_gets_its_hint(name, src, hint):
    res = run_exercise(define(src, name))
    assert res.status == "failed"
    assert hint in res.feedback, res.feedback


@pytest.mark.parametrize("body,reason", [
    ("    raise ValueError('boom')", "raised ValueError"),
    ("    return None", "None"),
    ("    return np.full(3, np.nan)", "integers"),
    ("    return np.zeros(9, np.uint64)", "shape"),
    ("    return 'words'", "dtype"),
])
def test_hostile_or_nonsense_output_fails_with_reason(body, reason):
    res = run_exercise(define(PACK.format(body), "pack_sign_bits"))
    assert res.status == "failed" and reason in res.feedback, res.feedback


def test_float_words_are_refused():
    src = PACK.format(_BITS.format(cond="x[k] == -1", bit="k % 64") + "    return words.astype(np.float64)")
    res = run_exercise(define(src, "pack_sign_bits"))
    assert res.status == "failed" and "integers" in res.feedback


def test_references_agree_with_independent_computations():
    rng = np.random.default_rng(0)
    ex_dot = REGISTRY["xnor_popcount_dot"]
    for case in ex_dot.prepared_cases():
        a_words, w_words, K = case.args
        a = 1.0 - 2.0 * np.unpackbits(a_words.view(np.uint8), bitorder="little")[:K]
        w = 1.0 - 2.0 * np.unpackbits(w_words.view(np.uint8), bitorder="little")[:K]
        assert case.expected == int(a @ w)                          # the float dot product of the ±1 vectors
    x = np.where(rng.random(100) < 0.5, -1.0, 1.0)
    words = pack_signs(x)
    assert [int(v) for v in words] == [sum(1 << i for i in range(64) if 64 * j + i < 100 and x[64 * j + i] < 0)
                                       for j in range(2)]
