"""ldm/compile.py: compiled hot parts compute what eager does, and a compiler failure only costs speed."""

import warnings

import pytest
import torch
from torch import nn

from ldm import compile as ldm_compile
from ldm.modules.implicit.liif import LIIF


class CompilerBroke(Exception):
    pass


CompilerBroke.__module__ = "torch._inductor.exc"  # what a real backend failure looks like


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder = nn.Conv2d(1, 4, 3, padding=1)
        self.decoder = nn.Conv2d(4, 4, 1)
        self.liif = LIIF(4, hidden=[8])

    def forward(self, x):
        return self.liif.render(self.decoder(self.encoder(x)), (12, 12))


def test_hot_parts_of_each_model_kind():
    net = Net()
    assert [(type(o).__name__, a) for o, a in ldm_compile.hot_parts(net)] == [
        ("Conv2d", "forward"), ("Conv2d", "forward"), ("LIIF", "_query")]

    class LDM(nn.Module):
        def __init__(self):
            super().__init__()
            self.unet, self.first_stage = nn.Linear(2, 2), Net()

    assert len(ldm_compile.hot_parts(LDM())) == 4
    assert ldm_compile.hot_parts(nn.Linear(2, 2)) == []


def test_a_compiler_failure_warns_once_and_runs_eager(monkeypatch):
    def broken(fn, **kwargs):
        def run(*args, **kw):
            raise CompilerBroke("no C++ compiler")
        return run

    monkeypatch.setattr(torch, "compile", broken)
    net = Net()
    x = torch.randn(1, 1, 6, 6)
    expected = net(x)
    restore = ldm_compile.compile_parts(ldm_compile.hot_parts(net))
    before = len(ldm_compile.FELL_BACK)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        first = net(x)
    assert [str(w.message).split(" (")[0] for w in caught] == [
        "torch.compile of Conv2d.forward failed, running it eager",
        "torch.compile of Conv2d.forward failed, running it eager",
        "torch.compile of LIIF._query failed, running it eager",
    ]
    assert ldm_compile.FELL_BACK[before:] == ["Conv2d.forward", "Conv2d.forward", "LIIF._query"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no second warning: those parts now run eager directly
        assert torch.equal(net(x), expected)
    assert torch.equal(first, expected)
    restore()
    assert "forward" not in vars(net.encoder) and "_query" not in vars(net.liif)


def test_other_errors_are_not_swallowed(monkeypatch):
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: fn)  # "compiles" to itself
    net = Net()
    ldm_compile.compile_parts(ldm_compile.hot_parts(net))
    with pytest.raises(RuntimeError):
        net(torch.randn(1, 3, 6, 6))  # wrong channel count: the caller's error, raised as such


def test_a_bad_mode_is_refused():
    with pytest.raises(ValueError, match="compile mode"):
        ldm_compile.compile_parts([], mode="fastest")


def test_a_callers_error_seen_by_the_tracer_is_raised_not_a_fallback(monkeypatch):
    """dynamo wraps errors it meets while tracing in its own classes; a bad input must still raise."""

    class TracedUserError(Exception):
        pass

    TracedUserError.__module__ = "torch._dynamo.exc"

    def tracing(fn, **kwargs):
        def run(*args, **kw):
            fn(*args, **kw)  # the real error surfaces while tracing ...
            return fn(*args, **kw)

        def wrapped(*args, **kw):
            try:
                return run(*args, **kw)
            except RuntimeError as err:  # ... and comes out wrapped, as dynamo does
                raise TracedUserError(str(err)) from err
        return wrapped

    monkeypatch.setattr(torch, "compile", tracing)
    net = Net()
    ldm_compile.compile_parts(ldm_compile.hot_parts(net))
    before = len(ldm_compile.FELL_BACK)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "compile failed" warning
        with pytest.raises(RuntimeError):
            net(torch.randn(1, 3, 6, 6))
    assert len(ldm_compile.FELL_BACK) == before
    assert torch.isfinite(net(torch.randn(1, 1, 6, 6))).all()  # still the compiled path, working


def test_compiling_twice_leaves_the_first_wrapper(monkeypatch):
    calls = []
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: calls.append(fn) or fn)
    net = Net()
    ldm_compile.compile_parts(ldm_compile.hot_parts(net))
    ldm_compile.compile_parts(ldm_compile.hot_parts(net))
    assert len(calls) == 3  # the three parts, once each
