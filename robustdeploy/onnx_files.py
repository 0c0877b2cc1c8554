"""Paths a bundle or an imported ONNX file refers to (external data), each kept inside its folder: the security
boundary shared by bundle.py and onnx_interface.py."""

from __future__ import annotations

from pathlib import Path

from robustdeploy.errors import RobustDeployError


def _inside(root: Path, relative: str) -> Path:
    """Resolve `relative` under `root`, refusing absolute paths, '..' escapes and symlinks."""
    candidate = Path(relative)
    if candidate.is_absolute() or ".." in candidate.parts or not relative:
        raise RobustDeployError(f"bundle refers to {relative!r}, outside its folder; refusing to load it")
    path = root / candidate
    for part in [path, *path.parents]:
        if part == root:
            break
        if part.is_symlink():
            raise RobustDeployError(f"bundle file {relative!r} is a symlink; refusing to load it")
    if not path.resolve().is_relative_to(root.resolve()):
        raise RobustDeployError(f"bundle file {relative!r} resolves outside the bundle; refusing to load it")
    return path


def _tensors_with_external_data(graph):
    """Every TensorProto in a graph and its subgraphs (initializers and tensor attributes)."""
    import onnx

    yield from graph.initializer
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.TENSOR:
                yield attr.t
            elif attr.type == onnx.AttributeProto.GRAPH:
                yield from _tensors_with_external_data(attr.g)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for sub in attr.graphs:
                    yield from _tensors_with_external_data(sub)


def external_files(path: Path, model=None) -> tuple[str, ...]:
    """The external-data files `path` refers to, relative to its folder; each must be a plain file inside that
    folder (no absolute path, no `..`, no symlink), the security boundary a bundle keeps (bundle.check_onnx_file)."""
    import onnx

    path = Path(path)
    model = model if model is not None else onnx.load(str(path), load_external_data=False)
    found: list[str] = []
    for tensor in _tensors_with_external_data(model.graph):
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        location = next((e.value for e in tensor.external_data if e.key == "location"), "")
        try:
            file = _inside(path.parent, location)
        except RobustDeployError:
            raise RobustDeployError(f"{path.name} keeps weights in {location!r}, outside its folder or a symlink; "
                                    f"move the external-data file next to {path.name}") from None
        if not file.is_file():
            raise RobustDeployError(f"{path.name} keeps weights in {location!r}, which is missing from {path.parent}; "
                                    "copy it there")
        found.append(location)
    return tuple(dict.fromkeys(found))
