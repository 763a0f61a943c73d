"""Expose the sentence embedding as an output of an exported graph.

Every task head is a linear layer (``Gemm``) over the same mean-pooled encoder output; that
tensor is the model's sentence vector, which the labeling queue uses for diversity (items
unlike those already labeled). Naming it a graph output costs nothing at scoring time (ONNX
Runtime computes only the outputs asked for) and changes no logit.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

import onnx
from onnx import TensorProto, helper

from features.bundle import read_bundle, write_meta

log = logging.getLogger("caretriage.training")

EMBEDDING = "embedding"


def head_input(graph: onnx.GraphProto, output: str, depth: int = 8) -> str | None:
    """The tensor the ``Gemm`` (or ``MatMul``) feeding ``output`` reads, following element-wise
    ops upward (a lexical expert blends into the logits with an ``Add``)."""
    producers = {o: n for n in graph.node for o in n.output}
    frontier = [output]
    for _ in range(depth):
        nxt: list[str] = []
        for name in frontier:
            node = producers.get(name)
            if node is None:
                continue
            if node.op_type in {"Gemm", "MatMul"}:
                return node.input[0]
            if node.op_type in {"Add", "Mul", "Div", "Sub", "Identity"}:
                nxt.extend(node.input)
        frontier = nxt
    return None


def expose_embedding(path: Path, outputs: Mapping[str, str], name: str = EMBEDDING) -> str | None:
    """Add the tensor every head reads as graph output ``name`` (in place); returns ``name``,
    or None (graph unchanged) when the heads do not share one input."""
    model = onnx.load(str(path))
    graph = model.graph
    if any(o.name == name for o in graph.output):
        return name
    inputs = {head_input(graph, out) for out in outputs.values()}
    if len(inputs) != 1 or None in inputs:
        log.warning("no shared head input in %s (found %s): no embedding output", path, inputs)
        return None
    (tensor,) = inputs
    identity = helper.make_node("Identity", [tensor], [name], name=f"{name}_output")
    graph.node.append(identity)
    graph.output.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, None))
    onnx.save(model, str(path))
    return name


def add_embedding_to_bundle(bundle_dir: Path) -> str | None:
    """Expose the embedding in an existing bundle's graph and record it in its metadata. The
    recorded self-check logits still hold (no logit changes); serving re-checks them at
    load."""
    bundle = read_bundle(bundle_dir)
    name = expose_embedding(bundle.onnx_path, bundle.meta.outputs)
    if name is not None and bundle.meta.embedding_output != name:
        meta = bundle.meta.model_copy(update={"embedding_output": name})
        write_meta(bundle_dir, meta)
    return name
