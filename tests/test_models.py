"""Tests for quantlab/models.py and the shipped data/cnn.pt (offline, < 20 s)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from quantlab import data as qdata
from quantlab.data import load_mnist
from quantlab.models import CHECKPOINT, SmallCNN, evaluate, fold_batchnorm, load_trained, main, train

ALLOWED = (nn.Conv2d, nn.BatchNorm2d, nn.ReLU, nn.MaxPool2d, nn.Flatten, nn.Linear)


@pytest.fixture(scope="module")
def test_set():
    return load_mnist("test")


@pytest.fixture(scope="module")
def trained():
    return load_trained()


def test_architecture_named_layers_allowed_types():
    m = SmallCNN()
    names = [n for n, _ in m.named_children()]
    assert names == ["conv1", "bn1", "relu1", "pool1", "conv2", "bn2", "relu2", "pool2",
                     "flatten", "fc1", "relu3", "fc2"]
    assert all(isinstance(mod, ALLOWED) for mod in m.children())
    assert m(torch.zeros(3, 1, 28, 28)).shape == (3, 10)


def test_checkpoint_small_and_state_dict_only():
    path = qdata.data_dir() / CHECKPOINT
    assert path.stat().st_size <= 1_000_000
    sd = torch.load(path, map_location="cpu", weights_only=True)  # plain tensors only, no pickled code
    assert set(sd) == set(SmallCNN().state_dict())


def test_load_trained_offline_and_accurate(no_network):
    model = load_trained()
    x, y = load_mnist("test")  # read from disk again, under the patch (cache cleared above)
    assert not model.training
    acc = evaluate(model, x, y)
    assert acc >= 0.97, acc


def test_evaluate_restores_mode_and_matches_manual(trained, test_set):
    x, y = test_set[0][:500], test_set[1][:500]
    trained.train()
    acc = evaluate(trained, x, y, batch_size=300)  # uneven last batch
    assert trained.training
    trained.eval()
    with torch.no_grad():
        manual = (trained(x).argmax(1) == y).double().mean().item()
    assert acc == pytest.approx(manual, abs=1e-12)
    with pytest.raises(ValueError, match="equal length"):
        evaluate(trained, x[:3], y[:4])


def test_fold_batchnorm_matches_eval_output(trained, test_set):
    x = test_set[0][:500]
    before = {k: v.clone() for k, v in trained.state_dict().items()}
    folded = fold_batchnorm(trained)
    assert isinstance(folded.bn1, nn.Identity) and isinstance(folded.bn2, nn.Identity)
    assert folded.conv1.bias is not None and folded.conv2.bias is not None
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    with torch.no_grad():
        ref, out = trained.eval()(x), folded(x)
    assert (out - ref).abs().max().item() <= 1e-5
    for k, v in trained.state_dict().items():  # original untouched
        assert torch.equal(v, before[k]), k
    assert isinstance(trained.bn1, nn.BatchNorm2d)


def test_fold_batchnorm_formula_with_conv_bias():
    """Independent reference: w' = w*gamma/sqrt(var+eps), b' = (b-mu)*gamma/sqrt(var+eps)+beta."""
    torch.manual_seed(1)
    conv, bn = nn.Conv2d(3, 4, 3, padding=1, bias=True), nn.BatchNorm2d(4, eps=1e-3)
    with torch.no_grad():
        bn.weight.uniform_(0.5, 2.0)
        bn.bias.uniform_(-1, 1)
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.1, 3.0)
    seq = nn.Sequential(conv, bn, nn.ReLU()).eval()
    folded = fold_batchnorm(seq)
    g, beta, mu, var = (t.detach().numpy().astype(np.float64) for t in
                        (bn.weight, bn.bias, bn.running_mean, bn.running_var))
    k = g / np.sqrt(var + 1e-3)
    w_ref = conv.weight.detach().numpy() * k[:, None, None, None]
    b_ref = (conv.bias.detach().numpy() - mu) * k + beta
    np.testing.assert_allclose(folded[0].weight.detach().numpy(), w_ref, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(folded[0].bias.detach().numpy(), b_ref, rtol=1e-6, atol=1e-7)
    assert isinstance(folded[1], nn.Identity)
    xin = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        assert torch.allclose(folded(xin), seq(xin), atol=1e-5)


def test_train_is_deterministic_and_restores_global_state():
    det0, thr0 = torch.are_deterministic_algorithms_enabled(), torch.get_num_threads()
    a = train(epochs=1, seed=0, progress=False, n=500)
    b = train(epochs=1, seed=0, progress=False, n=500)
    c = train(epochs=1, seed=1, progress=False, n=128)
    assert not a.training
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)  # same seed: bit-identical weights
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)  # another seed: different weights
    assert torch.are_deterministic_algorithms_enabled() == det0 and torch.get_num_threads() == thr0
    with pytest.raises(ValueError, match="epochs"):
        train(epochs=0)


def test_missing_checkpoint_says_how_to_remake(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match=r"python -m quantlab\.models train"):
        load_trained(tmp_path / "nope.pt")
    monkeypatch.setenv("QUANTLAB_DATA", str(tmp_path))
    with pytest.raises(FileNotFoundError, match=str(tmp_path)):
        load_trained()


def test_cli_trains_and_saves(tmp_path, monkeypatch, capsys):
    """The CLI end to end on a 200-image data folder (QUANTLAB_DATA), so it takes about a second."""
    src = np.load(qdata.data_dir() / qdata.FILENAME)
    small = {k: src[k][:200] if k.endswith("train") else src[k][:100] for k in src.files}
    np.savez_compressed(tmp_path / qdata.FILENAME, **small)
    monkeypatch.setenv("QUANTLAB_DATA", str(tmp_path))
    main(["train", "--epochs", "1"])
    out = capsys.readouterr().out
    assert "test accuracy" in out and " s on 1 thread" in out
    model = load_trained()  # from tmp_path/cnn.pt
    assert isinstance(model, SmallCNN) and not model.training
