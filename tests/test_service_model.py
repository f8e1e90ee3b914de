"""botocore's EC2 model cut down to the operation the monitor calls."""

from __future__ import annotations

import botocore.session
import pytest
from botocore.loaders import create_loader

from monitor.aws.service_model import EC2_OPERATIONS, TrimmedModelLoader, trimmed


def test_the_trimmed_model_keeps_the_operation_and_every_shape_it_reaches():
    full = create_loader().load_service_model("ec2", "service-2")

    model = trimmed(full, EC2_OPERATIONS)

    assert list(model["operations"]) == ["DescribeFastLaunchImages"]
    assert model["metadata"] == full["metadata"]
    for name, shape in model["shapes"].items():
        assert shape == full["shapes"][name]
        for member in shape.get("members", {}).values():
            assert member["shape"] in model["shapes"]
        for part in ("member", "key", "value"):
            if part in shape:
                assert shape[part]["shape"] in model["shapes"]
    assert len(model["shapes"]) < len(full["shapes"]) / 20


def test_a_missing_operation_is_a_key_error_at_once():
    full = create_loader().load_service_model("ec2", "service-2")

    with pytest.raises(KeyError):
        trimmed(full, ("DescribeSomethingThatDoesNotExist",))


def test_a_client_made_through_the_loader_has_only_the_trimmed_operation():
    session = botocore.session.Session()
    session.register_component("data_loader", TrimmedModelLoader())

    ec2 = session.create_client("ec2", region_name="eu-west-1")
    sts = session.create_client("sts", region_name="eu-west-1")

    assert ec2.meta.service_model.operation_names == ["DescribeFastLaunchImages"]
    assert hasattr(ec2, "describe_fast_launch_images")
    assert not hasattr(ec2, "run_instances")
    # Other services load whole.
    assert "GetCallerIdentity" in sts.meta.service_model.operation_names
    assert len(sts.meta.service_model.operation_names) > 5


def test_the_loader_trims_once_and_serves_every_session_the_same_model():
    loader = TrimmedModelLoader()

    first = loader.load_service_model("ec2", "service-2")
    again = loader.load_service_model("ec2", "service-2")

    assert first is again
