"""Candidates of a finished run: found by their dynabert_export.json (not the directory name), times runtime
and precision."""
import json

import pytest

from dynabert.deploy.candidates import enumerate_candidates, exported_models
from dynabert.errors import UserError


def test_candidates_come_from_the_export_metadata_not_the_directory_name(tmp_path):
    for folder, meta in (("a", {"width": 0.5, "depth": 0.75, "num_layers": 3}), ("b", {"width": 1.0}),
                         (".b.tmp-1", {"width": 0.25})):  # an interrupted export: ignored
        (tmp_path / "export" / folder).mkdir(parents=True)
        (tmp_path / "export" / folder / "dynabert_export.json").write_text(
            json.dumps({"num_heads": 2, "parameters": 10, **meta}))
        (tmp_path / "export" / folder / "config.json").write_text(json.dumps({"num_hidden_layers": 4}))
    models = exported_models(str(tmp_path))
    assert [(m.key, m.layers) for m in models] == [("width_1", 4), ("width_0.5_depth_0.75", 3)]
    names = [c.name for c in enumerate_candidates(models, runtimes=("paddle", "onnxruntime"),
                                                  precisions=("fp32", "int8"))]
    assert len(names) == 8 and names[0] == "width_1/paddle/fp32" and "width_0.5_depth_0.75/onnxruntime/int8" in names


def test_a_run_without_exports_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="export"):
        exported_models(str(tmp_path))
    with pytest.raises(UserError, match="--runtimes"):
        enumerate_candidates([], runtimes=("tensorrt",), precisions=("fp32",))
