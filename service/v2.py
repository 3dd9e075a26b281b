"""The Open Inference Protocol (KServe V2 / Triton REST), as far as a text classifier needs:
one BYTES input `text` of shape [n], outputs `label` (BYTES [n], or [n, k] with
`parameters.top_k`) and `probabilities` (FP32 [n, classes], classes in the order of the
model metadata's `parameters.classes`). JSON tensors, and the binary tensor extension for
inputs (what `tritonclient` sends by default: a JSON header of
`Inference-Header-Content-Length` bytes, then each binary input; BYTES elements as a 4-byte
little-endian length and the bytes). Outputs are always JSON (clients read both).

Written by hand: the protocol is small, and KServe's server package would bring its own
server; the tests use tritonclient to check it (tests/e2e/test_v2.py)."""

from __future__ import annotations

import json
import struct
from typing import Any

import numpy as np

from models._inference import Scored, top_labels
from service.errors import ApiError

INPUT = "text"
OUTPUTS = ("label", "probabilities", "out_of_scope", "chosen")  # chosen: multi-label only
PLATFORM = "onnxruntime_onnx"


class V2Error(ApiError):
    """A request the protocol refuses: `{"error": message}` with its own status."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status  # type: ignore[misc]


def metadata(
    name: str, versions: list[str], labels: list[str], *, multi_label: bool = False
) -> dict[str, Any]:
    outputs = [
        {"name": "label", "datatype": "BYTES", "shape": [-1]},
        {"name": "probabilities", "datatype": "FP32", "shape": [-1, len(labels)]},
        {"name": "out_of_scope", "datatype": "BOOL", "shape": [-1]},
    ]
    if multi_label:
        outputs.append({"name": "chosen", "datatype": "BOOL", "shape": [-1, len(labels)]})
    return {
        "name": name,
        "versions": versions,
        "platform": PLATFORM,
        "inputs": [{"name": INPUT, "datatype": "BYTES", "shape": [-1]}],
        "outputs": outputs,
        "parameters": {
            "classes": labels,
            "task": "multi_label" if multi_label else "single_label",
        },
    }


def parse_infer(body: bytes, header_length: str | None) -> dict[str, Any]:
    """{"texts", "top_k", "outputs", "id"} from an infer request, or V2Error(400)."""
    binary = b""
    if header_length is not None:
        if not header_length.isdigit() or int(header_length) > len(body):
            raise V2Error(400, "Inference-Header-Content-Length does not fit the body")
        binary = body[int(header_length) :]
        body = body[: int(header_length)]
    try:
        request = json.loads(body)
    except (ValueError, RecursionError):
        raise V2Error(400, "the request is not valid JSON") from None
    if not isinstance(request, dict):
        raise V2Error(400, 'the request must be a JSON object with "inputs"')
    inputs = request.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise V2Error(400, f'"inputs" must be a list with one tensor named {INPUT!r}')
    offset = 0
    texts: list[str] | None = None
    for tensor in inputs:
        if not isinstance(tensor, dict):
            raise V2Error(400, "each input must be an object with name, shape, datatype")
        params = tensor.get("parameters") or {}
        size = params.get("binary_data_size")
        chunk = None
        if size is not None:
            if not isinstance(size, int) or size < 0 or offset + size > len(binary):
                raise V2Error(400, f"input {tensor.get('name')!r}: binary_data_size out of range")
            chunk, offset = binary[offset : offset + size], offset + size
        if tensor.get("name") != INPUT:
            raise V2Error(
                400, f"unknown input {tensor.get('name')!r}; this model takes one input {INPUT!r}"
            )
        if tensor.get("datatype") != "BYTES":
            raise V2Error(400, f"input {INPUT!r} must be BYTES, got {tensor.get('datatype')!r}")
        shape = tensor.get("shape")
        if not (
            isinstance(shape, list)
            and shape
            and all(isinstance(d, int) and d >= 0 for d in shape)
            and (len(shape) == 1 or all(d == 1 for d in shape[1:]))
        ):
            raise V2Error(400, f"input {INPUT!r} must have shape [n] (or [n, 1]), got {shape!r}")
        texts = _bytes_elements(chunk) if chunk is not None else _json_elements(tensor.get("data"))
        if len(texts) != shape[0]:
            raise V2Error(400, f"input {INPUT!r} has shape {shape} but {len(texts)} elements")
    assert texts is not None
    parameters = request.get("parameters") or {}
    top_k = parameters.get("top_k", 1) if isinstance(parameters, dict) else 1
    if type(top_k) is not int:
        raise V2Error(400, f"parameters.top_k must be an integer, got {top_k!r}")
    wanted = [o.get("name") for o in request.get("outputs") or [] if isinstance(o, dict)]
    unknown = [o for o in wanted if o not in OUTPUTS]
    if unknown:
        raise V2Error(400, f"unknown output(s) {unknown}; this model has {list(OUTPUTS)}")
    return {
        "texts": texts,
        "top_k": top_k,
        "outputs": wanted,  # empty: every output the model has
        "id": request.get("id"),
    }


def _json_elements(data: Any) -> list[str]:
    flat: list[Any] = []
    stack = [data]
    while stack:  # flatten [n] or [[...], ...] without recursion
        item = stack.pop()
        if isinstance(item, list):
            stack.extend(reversed(item))
        else:
            flat.append(item)
    if not all(isinstance(x, str) for x in flat):
        raise V2Error(400, f'input {INPUT!r}: "data" must hold strings')
    return flat


def _bytes_elements(chunk: bytes) -> list[str]:
    out: list[str] = []
    i = 0
    while i < len(chunk):
        if i + 4 > len(chunk):
            raise V2Error(400, f"input {INPUT!r}: truncated BYTES element")
        (n,) = struct.unpack_from("<I", chunk, i)
        if i + 4 + n > len(chunk):
            raise V2Error(400, f"input {INPUT!r}: truncated BYTES element")
        try:
            out.append(chunk[i + 4 : i + 4 + n].decode("utf-8"))
        except UnicodeDecodeError:
            raise V2Error(400, f"input {INPUT!r}: element {len(out)} is not UTF-8") from None
        i += 4 + n
    return out


def infer_response(
    request: dict[str, Any],
    name: str,
    version: str,
    labels: tuple[str, ...],
    scored: Scored,
    out_of_scope_label: str,
) -> dict[str, Any]:
    """`label`: the answer (the out-of-scope label when out of scope; multi-label: the
    chosen labels joined by `|`, empty for none) or, with top_k > 1, the known labels ranked
    (like `/predict`'s `top`); `out_of_scope`: BOOL per text; `chosen` (multi-label): BOOL
    [n, classes], the labels at or above their thresholds."""
    probs, outside, chosen = scored.probabilities, scored.out_of_scope, scored.chosen
    wanted = request["outputs"] or [o for o in OUTPUTS if o != "chosen" or chosen is not None]
    if "chosen" in wanted and chosen is None:
        raise V2Error(400, f"output 'chosen' is for multi-label models; {name} is single-label")
    n = len(request["texts"])
    k = min(request["top_k"], len(labels))
    outputs = []
    if "label" in wanted:
        order = top_labels(probs, k)
        if request["top_k"] == 1 and chosen is not None:
            data = [
                "|".join(labels[j] for j in sorted(np.flatnonzero(c), key=lambda j: -p[j]))
                for c, p in zip(chosen, probs, strict=True)
            ]
        elif request["top_k"] == 1:
            data = [
                out_of_scope_label if o else labels[int(row[0])]
                for row, o in zip(order, outside.tolist(), strict=True)
            ]
        else:
            data = [labels[int(j)] for row in order for j in row]
        shape = [n] if request["top_k"] == 1 else [n, k]
        outputs.append({"name": "label", "datatype": "BYTES", "shape": shape, "data": data})
    if "probabilities" in wanted:
        outputs.append(
            {
                "name": "probabilities",
                "datatype": "FP32",
                "shape": [n, len(labels)],
                "data": [round(float(x), 7) for x in probs.astype(np.float32).ravel()],
            }
        )
    if "out_of_scope" in wanted:
        outputs.append(
            {"name": "out_of_scope", "datatype": "BOOL", "shape": [n], "data": outside.tolist()}
        )
    if "chosen" in wanted and chosen is not None:
        outputs.append(
            {
                "name": "chosen",
                "datatype": "BOOL",
                "shape": [n, len(labels)],
                "data": chosen.ravel().tolist(),
            }
        )
    answer: dict[str, Any] = {"model_name": name, "model_version": version, "outputs": outputs}
    if request.get("id") is not None:
        answer["id"] = request["id"]
    return answer
