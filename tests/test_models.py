"""Tests for quantlab/models/ and the shipped data/cnn.pt (offline, < 20 s)."""

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


# --- the model walker and the hooks -----------------------------------------------------------------

from quantlab.models import activation_hooks, collect_activations, find_layers, replace_layers  # noqa: E402


def test_find_layers_order_names_and_types():
    m = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Sequential(nn.ReLU(), nn.Linear(2, 2)), nn.Linear(2, 1))
    assert [(n, type(layer).__name__) for n, layer in find_layers(m)] == [
        ("0", "Conv2d"), ("1.1", "Linear"), ("2", "Linear")]
    assert [n for n, _ in find_layers(m, nn.ReLU)] == ["1.0"]
    assert [n for n, _ in find_layers(SmallCNN())] == ["conv1", "conv2", "fc1", "fc2"]
    assert find_layers(nn.Linear(2, 2))[0][0] == ""  # a bare layer is its own model
    with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
        find_layers(None)


def test_replace_layers_returns_a_copy_and_leaves_the_original_untouched():
    m = SmallCNN()
    before = {k: v.clone() for k, v in m.state_dict().items()}

    def zero(name, layer):
        with torch.no_grad():
            layer.weight.zero_()  # in place on the copy's layer
        return layer

    new = replace_layers(m, zero)
    assert all(float(layer.weight.detach().abs().sum()) == 0 for _, layer in find_layers(new))
    assert all(torch.equal(v, before[k]) for k, v in m.state_dict().items())
    swapped = replace_layers(m, lambda n, layer: nn.Identity(), types=nn.ReLU)
    assert isinstance(swapped.relu2, nn.Identity) and isinstance(m.relu2, nn.ReLU)
    nested = replace_layers(nn.Sequential(nn.Sequential(nn.ReLU())), lambda n, layer: nn.Tanh(), nn.ReLU)
    assert isinstance(nested[0][0], nn.Tanh)


@pytest.mark.parametrize("exc", [ValueError, TypeError])
def test_replace_layers_names_the_layer_in_errors(exc):
    def fail(name, layer):
        if name == "fc1":
            raise exc("weight is bad")
        return layer

    with pytest.raises(exc, match=r"layer 'fc1' \(Linear\): weight is bad"):
        replace_layers(SmallCNN(), fail)


def test_activation_hooks_remove_their_hooks_even_on_exception():
    m = SmallCNN()
    seen = []
    with pytest.raises(RuntimeError, match="boom"):
        with activation_hooks(m, lambda n, a: seen.append(n), nn.ReLU):
            m(torch.zeros(1, 1, 28, 28))
            raise RuntimeError("boom")
    assert seen == ["relu1", "relu2", "relu3"]
    assert all(not mod._forward_hooks and not mod._forward_pre_hooks for mod in m.modules())
    m(torch.zeros(1, 1, 28, 28))
    assert len(seen) == 3  # nothing is called any more
    inputs = {}
    with activation_hooks(m, lambda n, a: inputs.setdefault(n, a), "fc1", inputs=True):
        m(torch.ones(2, 1, 28, 28))
    assert inputs["fc1"].shape == (2, 32 * 7 * 7)
    with pytest.raises(ValueError, match="select names no layer"):
        with activation_hooks(m, print, ["nope"]):
            pass


def test_collect_activations_equals_a_manual_forward():
    torch.manual_seed(0)
    m = SmallCNN().eval()
    x = torch.rand(10, 1, 28, 28)
    acts = collect_activations(m, x, batch_size=3)  # uneven batches, concatenated
    with torch.no_grad():
        ref1 = m.relu1(m.bn1(m.conv1(x)))
    assert set(acts) == {"relu1", "relu2", "relu3"}
    assert torch.allclose(acts["relu1"], ref1, atol=1e-6)
    ins = collect_activations(m, x, select=("fc2",), inputs=True)
    with torch.no_grad():
        assert torch.allclose(ins["fc2"], nn.Sequential(*list(m.children())[:-1])(x), atol=1e-6)
    m.train()
    collect_activations(m, x)
    assert m.training  # mode restored
    with pytest.raises(TypeError, match="batch_size"):
        collect_activations(m, x, batch_size=1.5)
