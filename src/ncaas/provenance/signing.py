"""Certificate signatures: a certificate is a record the platform made, never a request.

The platform signs every certificate it writes with an HMAC-SHA256 key kept in its state
folder (``<state>/keys/``, mode 0700; each key 0600), never in group storage. A certificate
handed back by a user (a file given to ``ncaas rerun``, a body posted to ``/api/rerun``) is
trusted only when its signature verifies with one of those keys; anything else is refused
before a single field of it is used.

Keys are named by the first 16 hex digits of their own SHA-256. ``current`` names the key that
signs; older keys still verify the certificates they signed until they are retired (a leaked
key is retired: everything it signed is then suspect, and refused)::

    <state>/keys/<key id>.key     32 random bytes
    <state>/keys/current          the key id that signs new certificates
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
from pathlib import Path
from typing import Any

from ..exceptions import CertificateError, CertificateForged

__all__ = ["SIGNATURE_FIELD", "CertificateKeys", "canonical_bytes"]

SIGNATURE_FIELD = "signature"
_ALGORITHM = "hmac-sha256"


def canonical_bytes(cert: dict[str, Any]) -> bytes:
    """The bytes a signature covers: the certificate without its signature, as canonical JSON."""
    body = {k: v for k, v in cert.items() if k != SIGNATURE_FIELD}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False).encode()


def _key_id(key: bytes) -> str:
    return hashlib.sha256(key).hexdigest()[:16]


class CertificateKeys:
    """The signing keys of one storage root's platform state."""

    def __init__(self, state_dir: Path):
        self.dir = Path(state_dir) / "keys"

    # -- keys --------------------------------------------------------------------------
    def _write_key(self) -> str:
        self.dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.dir, 0o700)
        key = secrets.token_bytes(32)
        key_id = _key_id(key)
        fd = os.open(self.dir / f"{key_id}.key", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(key)
        current = self.dir / f"current.{key_id}.tmp"  # two certificates signed at once each make their own
        current.write_text(key_id + "\n")
        os.chmod(current, 0o600)
        os.replace(current, self.dir / "current")
        return key_id

    def current_id(self) -> str:
        """The id of the key that signs; made on first use."""
        try:
            return (self.dir / "current").read_text().strip()
        except FileNotFoundError:
            return self._write_key()

    def _key(self, key_id: str) -> bytes | None:
        if len(key_id) != 16 or any(c not in "0123456789abcdef" for c in key_id):
            return None
        try:
            key = (self.dir / f"{key_id}.key").read_bytes()
        except FileNotFoundError:
            return None
        return key if _key_id(key) == key_id else None

    def ids(self) -> list[str]:
        return sorted(p.stem for p in self.dir.glob("*.key")) if self.dir.is_dir() else []

    def rotate(self) -> str:
        """Make a new signing key; older keys still verify what they signed. Returns the new id."""
        return self._write_key()

    def retire(self, key_id: str) -> None:
        """Forget a key (say, a leaked one): no certificate it signed verifies any more, so none reruns."""
        if key_id == self.current_id():
            raise CertificateError(
                f"key {key_id} signs new certificates; rotate first (`ncaas admin rotate-key`), then retire it"
            )
        path = self.dir / f"{key_id}.key"
        if not path.is_file():
            raise CertificateError(f"no key {key_id}; `ncaas admin keys` lists them")
        path.unlink()

    # -- certificates ------------------------------------------------------------------
    def sign(self, cert: dict[str, Any]) -> dict[str, Any]:
        """``cert`` with its signature (any previous one replaced)."""
        key_id = self.current_id()
        key = self._key(key_id)
        if key is None:
            raise CertificateError(
                f"the signing key {key_id} named by {self.dir / 'current'} is missing or "
                "damaged; run `ncaas admin rotate-key` to make a new one"
            )
        value = hmac.new(key, canonical_bytes(cert), hashlib.sha256).hexdigest()
        return {**cert, SIGNATURE_FIELD: {"algorithm": _ALGORITHM, "key": key_id, "value": value}}

    def verify(self, cert: Any, *, where: str = "the certificate") -> dict[str, Any]:
        """Return ``cert`` when this platform signed it exactly as it is; else raise CertificateForged."""
        if not isinstance(cert, dict):
            raise CertificateForged(f"{where} is not a certificate (a JSON object written by ncaas)")
        signature = cert.get(SIGNATURE_FIELD)
        if not isinstance(signature, dict) or signature.get("algorithm") != _ALGORITHM:
            raise CertificateForged(
                f"{where} carries no signature of this platform; only certificates "
                "ncaas wrote itself can be rerun — rerun the job by its id instead"
            )
        key = self._key(str(signature.get("key", "")))
        if key is None:
            raise CertificateForged(
                f"{where} was signed with a key this platform does not hold (another "
                "installation, or a retired key); rerun the job by its id instead"
            )
        try:
            expected = hmac.new(key, canonical_bytes(cert), hashlib.sha256).hexdigest()
        except (TypeError, ValueError) as exc:
            raise CertificateForged(f"{where} is not a certificate this platform wrote ({exc})") from None
        if not hmac.compare_digest(expected, str(signature.get("value", ""))):
            raise CertificateForged(
                f"{where} was changed after this platform signed it; it is a record, not a "
                "request — rerun the job by its id instead"
            )
        return cert
