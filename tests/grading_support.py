"""Shared by the grader tests: the fixture solutions, and defining a learner's function from its cell source."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from quantlab.grading import REGISTRY

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "grading"


def load_fixture(name: str):
    """Import ``tests/fixtures/grading/<name>.py`` (the fixtures are not a package)."""
    spec = importlib.util.spec_from_file_location(f"grading_fixture_{name}", FIXTURES / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


#: SOLUTIONS (reference answers), STUBS (as shipped), WRONG catalogues live in the test files.
sol = load_fixture("solutions")


def define(src: str, name: str | None = None, prelude: str = ""):
    """Execute an exercise cell's source (after ``prelude``) and return the function it defines: ``name``, or
    the one whose name is a registered exercise id."""
    ns: dict = {}
    exec(prelude + src, ns)
    if name is None:
        name = next(k for k, v in ns.items() if callable(v) and k in REGISTRY)
    return ns[name]
