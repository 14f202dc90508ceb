"""Architecture rules that keep the model code independent of launch mechanics."""
import os
import re

from tests.conftest import ROOT


def _sources(folder):
    for base, _, files in os.walk(os.path.join(ROOT, folder)):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(base, name)
                yield os.path.relpath(path, ROOT), open(path, encoding="utf-8").read()


def test_fleet_init_is_called_in_exactly_one_place():
    calls = [path for folder in ("dynabert", "launcher", "tools", "benchmarks")
             for path, text in _sources(folder) if re.search(r"\bfleet\.init\(", text)]
    assert calls == ["launcher/fleet_setup.py"]


def test_dynabert_never_imports_the_distributed_package_or_the_launcher():
    offenders = [path for path, text in _sources("dynabert")
                 if re.search(r"^\s*(import|from)\s+(paddle\.distributed|launcher)\b", text, re.M)]
    assert offenders == []


def test_no_global_patching_of_paddle_or_paddlenlp_classes():
    # An assignment like `paddle.nn.MultiHeadAttention.forward = ...` or `BertModel.forward = ...`.
    pattern = re.compile(r"^\s*(paddle\.[\w.]+|paddlenlp\.[\w.]+|[A-Z]\w+)\.(forward|__init__|__call__)\s*=",
                         re.M)
    offenders = [path for folder in ("dynabert", "launcher", "tools")
                 for path, text in _sources(folder) if pattern.search(text)]
    assert offenders == []


def test_nothing_imports_paddleslims_globally_patching_module():
    offenders = [path for folder in ("dynabert", "launcher", "tools", "benchmarks")
                 for path, text in _sources(folder) if "nlp_utils" in text and "import" in text
                 and re.search(r"import[^\n]*nlp_utils|from[^\n]*nlp_utils[^\n]*import", text)]
    assert offenders == []


# ---- layering: which package of dynabert/ may import which -----------------------------------------------
# The top-level modules are the vocabulary everyone shares; data flows one way: data -> model -> train ->
# stages, with deploy beside train (it serves exported models and never trains); the pipeline reads like a
# table of contents and may import anything.
TOP = {"config", "errors", "io_utils", "machine", "collectives", "faults"}
MAY_IMPORT = {
    "top": {"top"},
    "data": {"top", "data"},
    "model": {"top", "data", "model"},
    "train": {"top", "data", "model", "train"},
    "deploy": {"top", "data", "model", "deploy"},
    "stages": {"top", "data", "model", "train", "deploy", "stages"},
    "pipeline": {"top", "data", "model", "train", "deploy", "stages"},
}


def _layer(module: str) -> str:
    """``dynabert.data.cache`` -> ``data``; ``dynabert.config`` -> ``top``."""
    parts = module.split(".")
    if len(parts) == 1 or parts[1] == "__init__":
        return "top"
    return "top" if parts[1] in TOP else parts[1]


def _module_of(path: str) -> str:
    name = path[:-3].replace(os.sep, ".")
    return name[:-len(".__init__")] if name.endswith(".__init__") else name


def _dynabert_imports():
    """(importing module, imported module) for every import of dynabert/ inside dynabert/, lazy ones too.
    ``from dynabert.data import cache`` names the module ``dynabert.data.cache`` (not the package)."""
    import ast

    modules = {_module_of(path) for path, _ in _sources("dynabert")}
    edges = set()
    for path, text in _sources("dynabert"):
        source = _module_of(path)
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("dynabert"):
                for alias in node.names:
                    sub = f"{node.module}.{alias.name}"
                    edges.add((source, sub if sub in modules else node.module))
            elif isinstance(node, ast.Import):
                edges.update((source, a.name) for a in node.names if a.name.startswith("dynabert"))
    return edges


def test_each_package_imports_only_the_layers_below_it():
    edges = _dynabert_imports()
    assert len(edges) > 100  # the walk found the imports (a broken walk would pass everything)
    offenders = sorted(f"{a} imports {b}" for a, b in edges
                       if b != "dynabert" and _layer(b) not in MAY_IMPORT[_layer(a)])
    assert offenders == []


def test_the_layering_rules_catch_an_upward_import():
    # The rules themselves: an import from data into model, or from model into train, is refused.
    assert _layer("dynabert.model.export") not in MAY_IMPORT[_layer("dynabert.data.cache")]
    assert _layer("dynabert.train.step") not in MAY_IMPORT[_layer("dynabert.model.depth")]
    assert _layer("dynabert.train.loop") not in MAY_IMPORT[_layer("dynabert.deploy.select")]
    assert _layer("dynabert.stages.common") not in MAY_IMPORT[_layer("dynabert.train.bench_step")]


def test_no_import_cycles_between_modules():
    edges = _dynabert_imports()
    graph = {}
    for a, b in edges:
        graph.setdefault(a, set()).add(b)
    state, cycles = {}, []

    def visit(node, stack):
        state[node] = "open"
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert cycles == []


def test_no_file_holds_merge_conflict_markers():
    markers = re.compile(r"^(<<<<<<< |>>>>>>> |=======$)", re.M)
    offenders = []
    for base, dirs, files in os.walk(ROOT):
        dirs[:] = [d for d in dirs if not d.startswith(".") and d not in ("runs", "log", "__pycache__")]
        for name in files:
            if name.endswith((".py", ".md", ".yaml", ".txt", ".toml", ".sh")) or name in ("Makefile", "run"):
                path = os.path.join(base, name)
                with open(path, encoding="utf-8", errors="replace") as f:
                    if markers.search(f.read()):
                        offenders.append(os.path.relpath(path, ROOT))
    assert offenders == []


def test_only_the_family_adapters_name_a_model_family():
    """What differs between BERT, ERNIE and RoBERTa lives in dynabert/model/families.py: no other module
    of the library reaches into a classifier's backbone by its family's attribute (``model.bert``) or names a
    family's PaddleNLP model, config or tokenizer class."""
    import ast

    family_class = re.compile(r"^(Bert|Ernie|Roberta)\w*(Config|Model|ForSequenceClassification|Tokenizer)$")
    offenders = []
    for path, text in _sources("dynabert"):
        if path == os.path.join("dynabert", "model", "families.py"):
            continue
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.Attribute) and node.attr in ("bert", "ernie", "roberta"):
                offenders.append(f"{path}:{node.lineno} .{node.attr}")
            elif isinstance(node, ast.alias) and family_class.match(node.name.split(".")[-1]):
                offenders.append(f"{path} imports {node.name}")
            elif isinstance(node, ast.Name) and family_class.match(node.id):
                offenders.append(f"{path}:{node.lineno} {node.id}")
    assert offenders == []
