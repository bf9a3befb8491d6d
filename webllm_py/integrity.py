"""Subresource Integrity (SRI) for model files: WebLLM's ``isValidSRI`` / ``verifyIntegrity`` (src/integrity.ts).

An SRI string is ``<algorithm>-<base64 of the digest>`` with algorithm sha256, sha384 or sha512 (the forms
``openssl dgst -sha384 -binary f | openssl base64 -A`` prints). Unlike WebLLM, which checks only the config, the
model library and the tokenizer, a model record's ``integrity`` here covers every file that is downloaded, shards of
a split GGUF included, and the check runs while the bytes stream in (``SRIDigest``), so a multi-GB file is never
read twice.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import logging
import re
from typing import Any

from .errors import IntegrityError, InvalidAppConfigError

log = logging.getLogger("webllm_py")

SRI_DIGEST_BYTES = {"sha256": 32, "sha384": 48, "sha512": 64}
_SRI = re.compile(r"^(sha256|sha384|sha512)-([A-Za-z0-9+/]+={0,2})$")


def is_valid_sri(value: Any) -> bool:
    """WebLLM's ``isValidSRI``: a known algorithm and the base64 of a digest of exactly its length."""
    match = _SRI.match(value) if isinstance(value, str) else None
    if match is None:
        return False
    try:
        digest = base64.b64decode(match.group(2), validate=True)
    except (binascii.Error, ValueError):
        return False
    return len(digest) == SRI_DIGEST_BYTES[match.group(1)]


class SRIDigest:
    """The digest of a file as it streams in, checked against ``expected`` (an SRI string) at the end."""

    def __init__(self, expected: str, url: str, on_failure: str = "error"):
        if not is_valid_sri(expected):
            raise InvalidAppConfigError(
                f"integrity of {url}",
                expected,
                "an SRI string: sha256-, sha384- or sha512- and the digest in base64",
            )
        self.expected = expected
        self.url = url
        self.on_failure = on_failure
        self.algorithm = expected.split("-", 1)[0]
        self._hash = hashlib.new(self.algorithm)

    def update(self, data: bytes | bytearray | memoryview) -> None:
        self._hash.update(data)

    @property
    def actual(self) -> str:
        return f"{self.algorithm}-{base64.b64encode(self._hash.digest()).decode()}"

    def check(self) -> None:
        """Raise ``IntegrityError`` on a mismatch (or log it, with ``on_failure`` "warn")."""
        actual = self.actual
        if actual == self.expected:
            return
        if self.on_failure == "warn":
            log.warning("Integrity check of %s failed: expected %s, got %s", self.url, self.expected, actual)
            return
        raise IntegrityError(self.url, self.expected, actual)


def verify_integrity(data: bytes, expected_sri: str, url: str, on_failure: str = "error") -> None:
    """WebLLM's ``verifyIntegrity(data, expectedSRI, url, onFailure)``: ``IntegrityError`` when ``data``'s digest
    is not ``expected_sri`` (logged instead with ``on_failure`` "warn"); ``InvalidAppConfigError`` for a malformed
    SRI string."""
    digest = SRIDigest(expected_sri, url, on_failure)
    digest.update(data)
    digest.check()
