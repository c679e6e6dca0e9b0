r"""Forbidding: while a learner's exercise runs, the functions that implement that same exercise refuse.

An exercise's ``forbids`` lists dotted names — ``"quantlab.linear.quantize"``,
``"torch.quantize_per_tensor"``, a method ``"torch.ao.quantization.observer.MinMaxObserver.calculate_qparams"``,
or a pattern in the last part, ``"quantlab.calibration.*quantize_histogram*"``. They are resolved when the
exercise is graded (importlib + getattr), so a module that became a package still works. A name in an
optional third-party library (``scipy.stats.entropy``, ``sklearn.cluster.KMeans``) is forbidden only where
that library is installed (:func:`installed`); where it is not, a learner cannot call it either. A :class:`Guard`
then, around each call of the learner's function, closes two doors:

1. **Every alias is replaced** by a function that raises :class:`ForbiddenCall` ("`quantize` may not call
   `quantlab.quantize` — write the formula yourself"): each attribute of every module in ``sys.modules``
   (and of the learner function's own globals) that *is* the forbidden object, plus the attribute where the
   name was resolved (a class's method, a namespace). ``ql.quantize``, ``from quantlab.linear import
   quantize as q``, ``getattr(ql, "quan" + "tize")`` and ``importlib.import_module(...)`` all meet it, and
   so does a library function that calls the forbidden one internally. Everything is restored afterwards,
   also after an exception or a timeout.
2. **A reference captured earlier** (a default argument ``f=ql.quantize``, a closure, an attribute of an
   object) is not replaced — but calling it is still seen: a profile hook (``sys.setprofile``) compares each
   call's code object (and each built-in called, by identity) with the forbidden ones and records the
   violation. The call then returns normally, and the case is graded failed with the same message.

ForbiddenCall derives from BaseException, so ``except Exception`` in learner code cannot hide it; and a
violation, once recorded, fails the exercise whatever the learner's code does next. This stops honest
mistakes and casual shortcuts, not a determined attacker running code in the same process (see the README:
run untrusted submissions in a container).
"""

from __future__ import annotations

import contextlib
import fnmatch
import importlib
import importlib.util
import inspect
import sys
import types

__all__ = ["ForbiddenCall", "Guard", "resolve", "prime", "installed"]


class ForbiddenCall(BaseException):
    """Raised when graded code calls a function its exercise forbids (a BaseException on purpose)."""


class _Target:
    """One forbidden object: its declared name, the object, and where it was resolved (owner, attr)."""

    def __init__(self, name, obj, owner, attr, raw):
        self.name, self.obj, self.owner, self.attr, self.raw = name, obj, owner, attr, raw
        fn = inspect.unwrap(obj) if callable(obj) else obj
        fn = getattr(fn, "__func__", fn)
        self.code = getattr(fn, "__code__", None)
        parts = name.split(".")  # the shortest public spelling: quantlab.quantize for quantlab.linear.quantize
        top = sys.modules.get(parts[0])
        short = len(parts) > 2 and getattr(top, parts[-1], None) is obj
        self.shown = f"{parts[0]}.{parts[-1]}" if short else name


def _import_prefix(parts: list[str]):
    """Import the longest importable module prefix of ``parts``: (module, index of the first attribute)."""
    for i in range(len(parts) - 1, 0, -1):
        name = ".".join(parts[:i])
        mod = sys.modules.get(name)
        if mod is None:
            try:
                mod = importlib.import_module(name)
            except Exception:  # not a module (an attribute), or not installed (e.g. scipy)
                continue
        return mod, i
    return None, 0


def installed(name: str) -> bool:
    """Whether the top-level package of a dotted name can be imported here (without importing it).

    Optional libraries (SciPy, scikit-learn, ...) may be absent: their names then resolve to nothing, and
    an exercise forbids them only where they are installed. quantlab, torch and NumPy are always installed.

    >>> installed("quantlab.linear.quantize"), installed("no_such_package_here.f")
    (True, False)
    """
    top = name.split(".")[0]
    if sys.modules.get(top) is not None:
        return True
    try:
        return importlib.util.find_spec(top) is not None
    except (ImportError, ValueError):  # ValueError: sys.modules[top] is None (an import blocked on purpose)
        return False


def resolve(name: str) -> list[_Target]:
    """The forbidden objects a dotted name stands for ([] when the package is not installed or the name is gone).

    >>> [t.shown for t in resolve("quantlab.linear.quantize")]
    ['quantlab.quantize']
    """
    parts = name.split(".")
    owner, i = _import_prefix(parts)
    if owner is None:
        return []
    try:
        for p in parts[i:-1]:
            owner = getattr(owner, p)
    except Exception:
        return []
    last = parts[-1]
    attrs = fnmatch.filter([a for a in dir(owner) if not a.startswith("__")], last) if "*" in last else [last]
    out = []
    for a in attrs:
        holder = owner
        if isinstance(owner, type):  # a method: patch the class that defines it
            holder = next((k for k in owner.__mro__ if a in vars(k)), None)
            if holder is None:
                continue
            raw = vars(holder)[a]
        else:
            raw = getattr(owner, a, None)
        obj = getattr(owner, a, None)
        if obj is not None and callable(obj):
            full = name if "*" not in last else ".".join([*parts[:-1], a])
            out.append(_Target(full, obj, holder, a, raw))
    return out


# ---------------------------------------------------------------------------------------------------
# Where the forbidden objects live: every module attribute that is one of them (cached per module set).

_SCAN_CACHE: dict = {}


def _scan(ids: frozenset) -> list[tuple[dict, str, int]]:
    found = []
    for mod in list(sys.modules.values()):
        d = getattr(mod, "__dict__", None)
        if isinstance(d, dict):
            found.extend((d, a, id(v)) for a, v in list(d.items()) if id(v) in ids)
    return found


def prime(names) -> None:
    """Resolve ``names`` and index their module aliases once (the CLI does this before forking)."""
    ids = frozenset(id(t.obj) for n in names for t in resolve(n))
    _SCAN_CACHE.clear()
    _SCAN_CACHE.update(ids=ids, n=len(sys.modules), found=_scan(ids))


def _module_aliases(ids: frozenset) -> list[tuple[dict, str, int]]:
    """(module dict, attribute, id) for every attribute of a loaded module that is a forbidden object.

    A full scan of sys.modules takes ~10 ms; it is reused while no module was added and every indexed
    place still holds its object. ``__main__`` (the notebook's namespace) is always scanned afresh.
    """
    c = _SCAN_CACHE
    fresh = c and c["n"] == len(sys.modules) and ids <= c["ids"] and all(id(d.get(a)) == i
                                                                      for d, a, i in c["found"])
    if not fresh:
        prime_ids = ids | c.get("ids", frozenset()) if c and c["n"] == len(sys.modules) else ids
        c.clear()
        c.update(ids=prime_ids, n=len(sys.modules), found=_scan(prime_ids))
    main = getattr(sys.modules.get("__main__"), "__dict__", {})
    return ([x for x in c["found"] if x[2] in ids and x[0] is not main]
            + [(main, a, id(v)) for a, v in list(main.items()) if id(v) in ids])


class Guard:
    """Forbid ``names`` while the learner's ``fn`` runs for exercise ``exercise_id``.

    ``with guard.active(): fn(*args)`` patches every alias and sets the profile hook; afterwards (also after
    an exception) everything is restored. ``guard.violation`` holds the message of the first forbidden call
    seen (None if none); reset it with ``guard.violation = None`` before each case if you like.

    >>> import quantlab as ql
    >>> g = Guard("quantize", ["quantlab.linear.quantize"])
    >>> with g.active():
    ...     ql.quantize(1.0, 0.1, 0, -8, 7)
    Traceback (most recent call last):
    ...
    quantlab.grading.forbid.ForbiddenCall: `quantize` may not call `quantlab.quantize` — write the formula yourself
    >>> ql.quantize(1.0, 0.1, 0, -8, 7)   # restored
    tensor(7, dtype=torch.int32)
    """

    def __init__(self, exercise_id: str, names, fn=None):
        self.exercise_id = exercise_id
        self.violation: str | None = None
        self.targets = [t for n in names for t in resolve(n)]
        self._by_id = {id(t.obj): t for t in self.targets}
        self._by_code = {t.code: t for t in self.targets if t.code is not None}
        self._fn_globals = getattr(fn, "__globals__", None)

    def message(self, t: _Target, via: str | None = None) -> str:
        """The learner-facing reason for calling ``t``."""
        through = f" (through `{via}`)" if via and via != t.name else ""
        return f"`{self.exercise_id}` may not call `{t.shown}`{through} — write the formula yourself"

    def _record(self, t: _Target, frame) -> str:
        via = None
        if frame is not None:
            mod = frame.f_globals.get("__name__", "")
            if mod.startswith(("quantlab.", "torch")) and not mod.startswith("quantlab.grading"):
                via = f"{mod}.{frame.f_code.co_qualname}"
        msg = self.message(t, via)
        if self.violation is None:
            self.violation = msg
        return msg

    def _blocker(self, t: _Target):
        def forbidden(*args, **kwargs):
            raise ForbiddenCall(self._record(t, sys._getframe(1)))
        forbidden.__name__ = forbidden.__qualname__ = t.attr
        return forbidden

    def _hook(self, frame, event, arg):
        if event == "call":
            t = self._by_code.get(frame.f_code)
            if t is not None:
                self._record(t, frame.f_back)
        elif event == "c_call":
            t = self._by_id.get(id(arg))
            if t is not None:
                self._record(t, frame)

    def _patch_list(self) -> list:
        """(container, attr, original, target) for every place a forbidden object is reachable by name."""
        places = [(d, a, d[a], self._by_id[i]) for d, a, i in _module_aliases(frozenset(self._by_id))]
        g = self._fn_globals
        if isinstance(g, dict):
            places += [(g, a, v, self._by_id[id(v)]) for a, v in list(g.items()) if id(v) in self._by_id]
        for t in self.targets:
            holder = t.owner.__dict__ if isinstance(t.owner, types.ModuleType) else t.owner
            places.append((holder, t.attr, t.raw, t))
        unique, seen = [], set()
        for p in places:
            if (id(p[0]), p[1]) not in seen:
                seen.add((id(p[0]), p[1]))
                unique.append(p)
        return unique

    @staticmethod
    def _set(container, attr, value) -> None:
        try:
            if isinstance(container, dict):
                container[attr] = value
            else:
                setattr(container, attr, value)
        except (AttributeError, TypeError):  # a read-only builtin type: the profile hook still sees calls
            pass

    @contextlib.contextmanager
    def active(self):
        """Patch every alias and watch every call until the block ends; restore everything after."""
        if not self.targets:
            yield self
            return
        places = self._patch_list()
        blockers = {id(t): self._blocker(t) for t in self.targets}
        old_profile = sys.getprofile()
        try:
            for c, a, _, t in places:
                self._set(c, a, blockers[id(t)])
            sys.setprofile(self._hook)
            yield self
        finally:
            sys.setprofile(old_profile)
            for c, a, orig, _ in reversed(places):
                self._set(c, a, orig)
