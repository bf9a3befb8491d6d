"""SRI helpers (WebLLM's isValidSRI / verifyIntegrity), on known digests."""

from __future__ import annotations

import logging

import pytest

from webllm_py.errors import IntegrityError, InvalidAppConfigError
from webllm_py.integrity import SRIDigest, is_valid_sri, verify_integrity

# The SHA-256 of b"" and of b"abc" (FIPS 180-2 test vectors), as SRI strings.
EMPTY = "sha256-47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU="
ABC = "sha256-ungWv48Bz+pBQUDeXa4iI7ADYaOWF3qctBD/YfIAFa0="


@pytest.mark.parametrize(
    "value, valid",
    [
        (EMPTY, True),
        (ABC, True),
        ("sha384-" + "A" * 64, True),  # 48 bytes
        ("sha512-" + "A" * 86 + "==", True),  # 64 bytes
        ("sha1-2jmj7l5rSw0yVb/vlWAYkK/YBwk=", False),  # not an SRI algorithm
        ("sha256-" + "A" * 43, False),  # 32 bytes need 44 characters with padding
        ("sha256-47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU", False),
        ("sha256 47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=", False),
        ("", False),
        (None, False),
    ],
)
def test_is_valid_sri(value, valid):
    assert is_valid_sri(value) is valid


def test_verify_integrity_known_digests():
    verify_integrity(b"", EMPTY, "empty")
    verify_integrity(b"abc", ABC, "abc")
    with pytest.raises(IntegrityError) as info:
        verify_integrity(b"abd", ABC, "https://x/y.gguf")
    assert (info.value.url, info.value.expected) == ("https://x/y.gguf", ABC)
    assert info.value.actual.startswith("sha256-") and info.value.actual != ABC


def test_verify_integrity_warn_mode_logs(caplog):
    with caplog.at_level(logging.WARNING, logger="webllm_py"):
        verify_integrity(b"abd", ABC, "u", on_failure="warn")
    assert "Integrity check of u failed" in caplog.text


def test_malformed_sri_is_a_config_error():
    with pytest.raises(InvalidAppConfigError, match="SRI string"):
        verify_integrity(b"", "md5-abc", "u")


def test_streamed_digest_equals_the_whole():
    digest = SRIDigest(ABC, "u")
    for piece in (b"a", b"", b"bc"):
        digest.update(piece)
    assert digest.actual == ABC
    digest.check()
