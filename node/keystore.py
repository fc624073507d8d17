"""The node's Ethereum account, kept as eth-account's standard encrypted JSON keystore (scrypt).

What it does: create a new account and write it encrypted (atomically, mode 0600), open it with a password, and
find that password from `--password-file`, `OPENLORA_PASSWORD`/`OPENLORA_PASSWORD_FILE` or a prompt.
What it does not do: ever write or log the private key in plain text.
"""

from __future__ import annotations

import getpass
import json
import os
from dataclasses import dataclass
from pathlib import Path

from eth_account import Account
from eth_account.signers.local import LocalAccount

from openlora.fsutil import atomic_write
from openlora.node.errors import KeystoreError

MIN_PASSWORD_LEN = 8


@dataclass(frozen=True)
class PasswordSource:
    """Where the password comes from, resolved in this order: file, environment, interactive prompt."""
    file: Path | None = None
    allow_prompt: bool = True

    def read(self, confirm: bool = False) -> str:
        path = self.file or (Path(os.environ["OPENLORA_PASSWORD_FILE"]) if os.environ.get("OPENLORA_PASSWORD_FILE")
                             else None)
        if path is not None:
            try:
                text = path.read_text(encoding="utf-8")
            except OSError as e:
                raise KeystoreError(f"cannot read password file {path}: {e.strerror}") from None
            pw = text.rstrip("\r\n")
            if not pw:
                raise KeystoreError(f"password file {path} is empty")
            return pw
        if os.environ.get("OPENLORA_PASSWORD"):
            return os.environ["OPENLORA_PASSWORD"]
        if not self.allow_prompt:
            raise KeystoreError("no password given: use --password-file, OPENLORA_PASSWORD_FILE or OPENLORA_PASSWORD")
        try:
            pw = getpass.getpass("Keystore password: ")
            if confirm and getpass.getpass("Repeat password: ") != pw:
                raise KeystoreError("the two passwords differ; nothing was written")
        except EOFError:
            raise KeystoreError("no password given and no terminal to ask on: use --password-file") from None
        return pw


def create_keystore(path: Path, password: str) -> str:
    """Create a new account, write its encrypted keystore to `path` (must not exist). Returns the address."""
    if len(password) < MIN_PASSWORD_LEN:
        raise KeystoreError(f"the keystore password must have at least {MIN_PASSWORD_LEN} characters")
    if path.exists():
        raise KeystoreError(f"{path} already exists; refusing to overwrite an existing key")
    acct = Account.create()
    blob = Account.encrypt(acct.key, password)
    atomic_write(path, json.dumps(blob), mode=0o600)
    return acct.address


def read_address(path: Path) -> str:
    """The address stored (unencrypted, as the standard allows) in the keystore, without the password."""
    blob = _read_blob(path)
    addr = blob.get("address")
    if not isinstance(addr, str) or len(addr.removeprefix("0x")) != 40:
        raise KeystoreError(f"{path} has no valid 'address' field; is it an Ethereum JSON keystore?")
    from eth_utils import to_checksum_address
    return to_checksum_address("0x" + addr.removeprefix("0x"))


def unlock(path: Path, password: str) -> LocalAccount:
    """Decrypt the keystore; a wrong password is a KeystoreError (one line), never a traceback."""
    blob = _read_blob(path)
    try:
        key = Account.decrypt(blob, password)
    except ValueError as e:
        if "MAC mismatch" in str(e):
            raise KeystoreError(f"wrong password for keystore {path}") from None
        raise KeystoreError(f"cannot decrypt keystore {path}: {e}") from None
    return Account.from_key(key)


def read_key_file(path: Path, password: PasswordSource | None = None) -> LocalAccount:
    """A key given on the command line (--key-file): a 0x hex private key, or a JSON keystore opened with the
    password from `password` (file, environment, prompt). Anything else is one KeystoreError line."""
    try:
        text = Path(path).read_text(encoding="utf-8").strip()
    except UnicodeDecodeError:
        raise KeystoreError(f"key file {path} is not text: give a 0x hex private key or a JSON keystore") from None
    except OSError as e:
        raise KeystoreError(f"cannot read key file {path}: {e.strerror}") from None
    if text.startswith("{"):
        _read_blob(Path(path))               # a malformed keystore is reported before any password is asked
        return unlock(Path(path), (password or PasswordSource()).read())
    try:
        return Account.from_key(text)
    except (ValueError, TypeError, ArithmeticError):   # eth-keys raises ValueError; odd hex lengths binascii.Error
        raise KeystoreError(f"key file {path} holds neither a 32-byte hex private key nor a JSON keystore") from None


def _read_blob(path: Path) -> dict:
    if not path.is_file():
        raise KeystoreError(f"no keystore at {path}: run `openlora-node init` first")
    try:
        blob = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise KeystoreError(f"cannot read keystore {path}: {e}") from None
    if not isinstance(blob, dict) or "crypto" not in blob and "Crypto" not in blob:
        raise KeystoreError(f"{path} is not an Ethereum JSON keystore (no 'crypto' section)")
    return blob
