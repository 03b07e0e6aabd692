"""The three layers (README "Architecture"): the library never reads a config (no omegaconf, hydra, `rfsweep.run` or
`rfsweep.cli`), the run layer never imports an entry point, and no module of the package imports itself back through
others (every import counts, the ones inside functions too)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("rfsweep", "analysis")
CONFIG_READERS = ("omegaconf", "hydra", "rfsweep.run", "rfsweep.cli")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))}


def imports(path: Path, name: str, known: dict) -> set[str]:
    """Every module `path` imports, anywhere in its source: `from a.b import c` counts as a.b.c when that is a module
    of ours, else as a.b."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            for a in node.names:
                out.add(f"{base}.{a.name}" if f"{base}.{a.name}" in known else base)
    out.discard(name)
    return out


def graph() -> dict[str, set[str]]:
    known = modules()
    return {m: imports(p, m, known) for m, p in known.items()}


def _within(target: str, prefixes) -> bool:
    return any(target == p or target.startswith(p + ".") for p in prefixes)


def layer(module: str) -> str:
    if _within(module, ("rfsweep.cli", "rfsweep.__main__")):
        return "cli"
    return "run" if _within(module, ("rfsweep.run",)) else "library"


def test_library_never_reads_a_config():
    bad = {m: sorted(t for t in targets if _within(t, CONFIG_READERS))
           for m, targets in graph().items() if layer(m) == "library"}
    assert not {m: t for m, t in bad.items() if t}


def test_run_layer_never_imports_an_entry_point():
    bad = {m: sorted(t for t in targets if _within(t, ("rfsweep.cli", "rfsweep.__main__")))
           for m, targets in graph().items() if layer(m) == "run"}
    assert not {m: t for m, t in bad.items() if t}


def cycles(g: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in g.get(v, ()):
            if w not in g:
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(g):
        if v not in index:
            visit(v)
    return out


def test_no_import_circle():
    assert cycles(graph()) == []


def test_the_checks_can_fail():
    """The rules above see a circle and a library module that reads a config (on a made-up graph)."""
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _within("omegaconf", CONFIG_READERS) and _within("rfsweep.run.job", CONFIG_READERS)
    assert not _within("rfsweep.runfolder", CONFIG_READERS)
    assert layer("rfsweep.runfolder") == "library" and layer("rfsweep.run.job") == "run"


def test_no_two_modules_of_one_name():
    """A module's name says what it is, once: no two modules (or a module and a package) share a name."""
    names: dict[str, list[str]] = {}
    for module in modules():
        last = module.rpartition(".")[2]
        if last not in ("__main__", *PACKAGES):
            names.setdefault(last, []).append(module)
    assert not {n: ms for n, ms in names.items() if len(ms) > 1}
