"""Password file entries in the PBKDF2-SHA512 form mosquitto 2 reads (`user:$7$ITERATIONS$SALT$HASH`,
salt and hash base64), made in Python so no mosquitto_passwd is needed on the host that writes them.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

# mosquitto_passwd 2.0 uses these; the broker reads the iteration count from each line.
PBKDF2_ITERATIONS = 101
SALT_BYTES = 12
HASH_BYTES = 64


def new_password() -> str:
    """A random password (192 bits) made of URL-safe characters."""
    return secrets.token_urlsafe(24)


def hash_password(password: str, salt: bytes | None = None, iterations: int = PBKDF2_ITERATIONS) -> str:
    """`$7$iterations$salt$hash` for `password` (a fresh random salt unless one is given)."""
    salt = secrets.token_bytes(SALT_BYTES) if salt is None else salt
    digest = hashlib.pbkdf2_hmac("sha512", password.encode("utf-8"), salt, iterations, HASH_BYTES)
    return f"$7${iterations}${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


def verify_password(password: str, encoded: str) -> bool:
    """True when `encoded` (a `$7$...` hash) was made from `password`."""
    parts = encoded.split("$")
    if len(parts) != 5 or parts[1] != "7":
        raise ValueError(f"not a PBKDF2-SHA512 ($7$) password hash: {encoded[:12]!r}...")
    iterations, salt, expected = int(parts[2]), base64.b64decode(parts[3]), base64.b64decode(parts[4])
    digest = hashlib.pbkdf2_hmac("sha512", password.encode("utf-8"), salt, iterations, len(expected))
    return hmac.compare_digest(digest, expected)


def password_file_line(username: str, password: str) -> str:
    if ":" in username or "\n" in username:
        raise ValueError(f"user name {username!r} cannot be in a password file (it holds ':' or a newline)")
    return f"{username}:{hash_password(password)}"
