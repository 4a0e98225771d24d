"""Secrets in files and in the environment, never in argv; private files for run state.

Where it sits: the CLI reads the controller's, the agents' and the operators' tokens
through `read_token` (a file named by a flag > an environment variable > none), and
`elastiq run` writes its run file with `write_private`. A token file must be readable
by its owner only (as ssh insists for keys): a group- or world-readable one is refused
with a message saying how to fix it, since anyone on the machine could have read it.
"""

from __future__ import annotations

import os
import secrets
import stat

from elastiq import envvars

#: bytes of randomness in a generated token (256 bits)
TOKEN_BYTES = 32


def new_token() -> str:
    return secrets.token_urlsafe(TOKEN_BYTES)


def read_token(path: str | None, env_name: str, what: str) -> str:
    """The token in file `path` if given, else the variable `env_name`, else ''."""
    if path:
        try:
            st = os.stat(path)
            with open(path, encoding="utf-8") as fh:
                token = fh.read().strip()
        except OSError as exc:
            raise ValueError(f"{what} token file {path}: {exc.strerror}") from exc
        if stat.S_IMODE(st.st_mode) & 0o077:
            raise ValueError(
                f"{what} token file {path} is readable by others "
                f"(mode {stat.S_IMODE(st.st_mode):04o}): chmod 600 {path}"
            )
        if not token:
            raise ValueError(f"{what} token file {path} is empty")
        return token
    return envvars.resolve(None, env_name, "", str)


def write_private(path: str, text: str) -> None:
    """Write `text` to `path`, mode 0600 from its creation, replacing it atomically."""
    tmp = f"{path}.tmp-{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)
    os.replace(tmp, path)
