"""Fixtures for the whitelist tests."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from .support import Forge


@pytest.fixture
def forge() -> Forge:
    return Forge(Ed25519PrivateKey.generate())
