from __future__ import annotations

import pytest

from monitor.demo.simulator.paging import decode_token, encode_token, query_fingerprint
from monitor.demo.simulator.wire import Ec2Error

QUERY = query_fingerprint(["ami-2", "ami-1"], [("state", ["enabled"])])


def test_a_token_gives_back_the_position_it_was_made_for() -> None:
    token = encode_token("ami-0123456789abcdef0", QUERY)

    assert "ami-" not in token
    assert decode_token(token, QUERY) == "ami-0123456789abcdef0"


def test_the_query_fingerprint_ignores_order_and_duplicates() -> None:
    same = query_fingerprint(["ami-1", "ami-2", "ami-1"], [("state", ["enabled", "enabled"])])

    assert same == QUERY


def test_a_token_made_for_another_query_is_refused() -> None:
    token = encode_token("ami-1", QUERY)
    other = query_fingerprint([], [("state", ["enabling"])])

    with pytest.raises(Ec2Error) as refused:
        decode_token(token, other)

    assert refused.value.code == "InvalidParameterValue"


@pytest.mark.parametrize("token", ["", "abc", "not base64 at all!", "é", "A" * 40])
def test_a_token_the_simulator_did_not_issue_is_refused(token: str) -> None:
    with pytest.raises(Ec2Error, match="InvalidParameterValue"):
        decode_token(token, QUERY)
