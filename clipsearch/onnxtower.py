"""A model tower kept as ONNX in the library folder: what the text and image exports share.

A tower lives in its own folder (``text-onnx/``, ``image-onnx/``) with a ``meta.json``
written last, so a folder without one is unfinished. It is built in a work folder
beside it and swapped in whole; exports run under the library's writer lock, so a work
folder found at the start of an export was left by a killed run and goes.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import warnings
from collections.abc import Iterator
from pathlib import Path

META = "meta.json"


class NotExportable(Exception):
    """This model's tower cannot be served by the ONNX path, or not faithfully."""


def read_meta(folder: Path, model: str) -> dict | None:
    """The meta of a finished tower made from ``model``, else None."""
    try:
        meta = json.loads((folder / META).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return meta if meta.get("model") == model else None


@contextlib.contextmanager
def building(root: Path, name: str) -> Iterator[Path]:
    """A fresh work folder; on a clean exit it replaces ``root/name``. The body must write
    ``meta.json`` into it last (:func:`write_meta`)."""
    for stale in root.glob(f".{name}.*.tmp"):
        shutil.rmtree(stale, ignore_errors=True)
    work = root / f".{name}.{os.getpid()}.tmp"
    work.mkdir(parents=True)
    try:
        yield work
        if not (work / META).is_file():
            raise RuntimeError(f"the {name} export wrote no {META}")
        shutil.rmtree(root / name, ignore_errors=True)
        os.replace(work, root / name)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def write_meta(folder: Path, meta: dict) -> None:
    (folder / META).write_text(json.dumps(meta, indent=1), encoding="utf-8")


def export(module, example: tuple, path: Path, input_name: str, dynamic: dict) -> None:
    """Export ``module`` with torch's dynamo exporter (opset 18), weights in a file beside it.
    ``dynamic`` maps the input's axes to ``torch.export.Dim`` objects."""
    import torch

    # The exporter reports its steps with print(): keep stdout for the command's output.
    # Gradients on: under no_grad, attention may take a fused path it cannot trace.
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings(), torch.enable_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(module.eval(), example, str(path), dynamo=True, opset_version=18,
                          input_names=[input_name], output_names=["features"],
                          dynamic_shapes={input_name: dynamic}, external_data=True, optimize=True, verify=False)
    path.with_suffix(path.suffix + ".json").unlink(missing_ok=True)  # the exporter's own report


def session(path: Path, *, cold: bool):
    """An onnxruntime CPU session over ``path``.

    ``cold``: for a process that runs a few inputs and exits. Prepacking copies and
    re-lays out every weight as the session loads (0.15-0.5 s for ViT-B-32) to save
    ~15 ms per call, the wrong trade there (timed by hand on the 2-core CPU machine,
    loading the exported text tower both ways; ``benchmarks/bench_cold.py`` measures the
    cold query as a whole). Otherwise (indexing) the session keeps
    prepacking but does not spin its threads while idle: busy-waiting workers would take
    the CPU from the decode processes that feed them.
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    if cold:
        options.add_session_config_entry("session.disable_prepacking", "1")
    else:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
