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
