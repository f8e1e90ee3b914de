"""Fixtures of real loopback webhook receivers (see `tests/alerts/receivers.py`)."""

from __future__ import annotations

import ssl
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.alerts.receivers import CertificateAuthority, Receiver, refusing_url
from tests.alerts.tinyproxy import Tinyproxy, tinyproxies


@pytest.fixture
def make_receiver() -> Iterator[Callable[..., Receiver]]:
    """A factory of receivers (`tls=` a server context for HTTPS), all closed after the test."""
    started: list[Receiver] = []

    def make(*, tls: ssl.SSLContext | None = None) -> Receiver:
        receiver = Receiver(tls=tls)
        started.append(receiver)
        return receiver

    yield make
    for receiver in started:
        receiver.close()


@pytest.fixture
def receiver(make_receiver: Callable[..., Receiver]) -> Receiver:
    """A plain HTTP receiver on loopback that answers 200 until told otherwise."""
    return make_receiver()


@pytest.fixture(scope="session")
def certificate_authority(tmp_path_factory: pytest.TempPathFactory) -> CertificateAuthority:
    """A private CA no system trusts; its certificate is in `.ca_file`."""
    return CertificateAuthority(tmp_path_factory.mktemp("ca"))


@pytest.fixture
def https_receiver(
    make_receiver: Callable[..., Receiver], certificate_authority: CertificateAuthority
) -> Receiver:
    """An HTTPS receiver on loopback whose certificate `certificate_authority` signed."""
    return make_receiver(tls=certificate_authority.server_context())


@pytest.fixture
def refused_url() -> Iterator[str]:
    """A loopback URL on which connections are refused."""
    with refusing_url("/hook") as url:
        yield url


@pytest.fixture
def start_tinyproxy(tmp_path: Path) -> Iterator[Callable[..., Tinyproxy]]:
    """A starter of real tinyproxies on loopback (`credentials=(user, password)` for basic
    auth), all stopped after the test; see `tests/alerts/tinyproxy.py`."""
    with tinyproxies(tmp_path) as start:
        yield start
