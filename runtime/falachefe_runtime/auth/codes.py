"""One-time codes: drawn with ``secrets``, stored as an HMAC, compared in constant time.

Only ``HMAC-SHA256(auth.otp_secret, company:phone:code)`` reaches the
database, so a leaked table does not reveal live codes (and six digits are
too few to store with a plain hash: a million guesses break any of them;
without the key, no guess can be checked). The company and phone are part
of the MAC, so a code issued for one phone proves nothing for another.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from uuid import UUID

CODE_DIGITS = 6


def new_code() -> str:
    """A uniformly random six-digit code, leading zeros kept."""
    return f"{secrets.randbelow(10**CODE_DIGITS):0{CODE_DIGITS}d}"


def code_mac(secret: bytes, company_id: UUID, phone_number: str, code: str) -> bytes:
    message = f"{company_id}:{phone_number}:{code}".encode()
    return hmac.new(secret, message, hashlib.sha256).digest()


def code_matches(secret: bytes, company_id: UUID, phone_number: str, code: str, stored_mac: bytes) -> bool:
    return hmac.compare_digest(code_mac(secret, company_id, phone_number, code), stored_mac)
