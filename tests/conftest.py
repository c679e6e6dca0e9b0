"""Shared fixtures for the quantlab tests."""

from __future__ import annotations

import socket
import sys

import pytest
import torch

from quantlab import data as qdata


@pytest.fixture(scope="module")
def single_thread():
    """Run a module's torch ops on one thread (restored afterwards).

    The core tests use many small tensors; on a busy 2-core machine torch's thread pool spends far
    more time waking threads than computing (a 72k-element op goes from ~0.1 ms to ~90 ms).
    Opt in with ``pytestmark = pytest.mark.usefixtures("single_thread")``.
    """
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def random_cnn():
    """A seeded, untrained SmallCNN in eval mode with non-trivial BatchNorm statistics (so folding matters);
    one per test module."""
    from quantlab.models import SmallCNN

    torch.manual_seed(0)
    model = SmallCNN().eval()
    with torch.no_grad():
        for bn in (model.bn1, model.bn2):
            bn.running_mean.uniform_(-0.2, 0.2)
            bn.running_var.uniform_(0.5, 2.0)
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-0.1, 0.1)
    return model


@pytest.fixture(autouse=True)
def _close_figures():
    """Close the figures a test made (explorers are built per test), so pyplot does not pile up hundreds."""
    yield
    plt = sys.modules.get("matplotlib.pyplot")
    if plt is not None:
        plt.close("all")


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to open a socket fails loudly; the data cache is cleared so the file is really read."""

    def refuse(*args, **kwargs):
        raise AssertionError("quantlab tried to open a network socket")

    monkeypatch.setattr(socket, "socket", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    qdata._arrays.cache_clear()
    yield
    qdata._arrays.cache_clear()


DEVICES = ["cpu", "sim"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.fixture(params=DEVICES)
def device(request):
    """Each device in turn: 'cpu'; 'sim', a simulated second device (``cpu:1``, tests/simdevice.py) with CUDA's
    rules, so the rule is tested on every machine; and 'cuda' when torch.cuda.is_available().

    Device tests run the library on this device and compare with the CPU result (the device rule,
    CONTRIBUTING.md "Devices").
    """
    if request.param != "sim":
        yield torch.device(request.param)
        return
    from simdevice import simulated_device

    with simulated_device() as sim:
        yield sim
