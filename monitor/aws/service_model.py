"""botocore's EC2 model, cut down to the one operation the monitor calls.

botocore builds each client from its service's whole model: for EC2, some 750 operations, so
every EC2 client costs about 1.4 MB and 30 ms to make, and a fleet of 100 accounts in 10
regions holds 1,000 of them. The monitor calls one EC2 operation, so its sessions load EC2
through `TrimmedModelLoader`, which hands botocore a model of that operation and the shapes
it reaches, and nothing else: the same wire protocol, serializer and parser, a tenth of the
memory and time per client. Every other service (STS) loads whole.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from botocore.loaders import Loader, create_loader, instance_cache

#: The EC2 operations the monitor's clients can call.
EC2_OPERATIONS: tuple[str, ...] = ("DescribeFastLaunchImages",)


def _references(shape: Mapping[str, Any]) -> Iterator[str]:
    """The names of the shapes one shape refers to (members, list items, map keys and values)."""
    for member in shape.get("members", {}).values():
        yield member["shape"]
    for part in ("member", "key", "value"):
        if part in shape:
            yield shape[part]["shape"]


def trimmed(model: Mapping[str, Any], operations: Iterable[str]) -> dict[str, Any]:
    """`model` with only `operations`, the shapes they reach, and no documentation.

    Raises `KeyError` if an operation is not in the model: a botocore without it is a
    botocore the monitor cannot work with, better told at start than at the first poll.
    """
    kept_operations = {name: model["operations"][name] for name in operations}
    shapes = model["shapes"]
    wanted = [
        ref["shape"]
        for operation in kept_operations.values()
        for ref in (operation.get("input"), operation.get("output"), *operation.get("errors", ()))
        if ref
    ]
    kept: dict[str, Any] = {}
    while wanted:
        name = wanted.pop()
        if name not in kept:
            kept[name] = shapes[name]
            wanted.extend(_references(shapes[name]))
    result = {key: value for key, value in model.items() if key not in ("operations", "shapes")}
    result.pop("documentation", None)
    result["operations"] = kept_operations
    result["shapes"] = kept
    return result


class TrimmedModelLoader(Loader):  # type: ignore[misc]
    """A botocore loader that serves EC2's model with `EC2_OPERATIONS` only.

    One is shared by every session of the process, so each model is read and trimmed once.
    """

    @instance_cache  # type: ignore[untyped-decorator]
    def load_service_model(
        self, service_name: str, type_name: str, api_version: str | None = None
    ) -> Any:
        if (service_name, type_name) != ("ec2", "service-2"):
            return super().load_service_model(service_name, type_name, api_version)
        # Read through a loader of its own, which is dropped with the whole model (tens of
        # MB parsed), so only the trimmed one stays in memory.
        full = create_loader().load_service_model(service_name, type_name, api_version)
        return trimmed(full, EC2_OPERATIONS)
