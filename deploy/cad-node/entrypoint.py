#!/usr/bin/env python3
"""The images' entrypoint: adds the admin token from the environment, then runs cad-node.

node.yaml holds tokens only as their sha256 (``admin.tokens``), and a mounted node.yaml is
the same on every host. So that a deployment can keep its token out of the file, this
entrypoint reads the sha256 of one admin token from ``CAD_NODE_ADMIN_TOKEN_SHA256`` (the
compose file's ``.env``) or from the file ``CAD_NODE_ADMIN_TOKEN_SHA256_FILE`` names (a
Docker or Kubernetes secret), appends ``{name, role: admin, sha256}`` to the config's
``admin.tokens``, writes the result (mode 0600) under ``CAD_NODE_RUNTIME_DIR``
(default ``/tmp/cad-node``) and replaces itself with ``cad-node ... --config <that file>``.
Without either variable the command runs unchanged.

The sha256 is checked here (64 hex digits, not the sha256 of a well-known token) so that
the error names the variable; ``sha256sum``'s own output (``<hex>  -``) is accepted.
Exit status 2, as cad-node's for a configuration error, when anything is wrong.
"""

import os
import re
import sys
from pathlib import Path
from typing import Any

import yaml

from cad_node.config import WEAK_TOKEN_SHA256, load_settings
from cad_node.errors import ConfigError

SHA256_VARIABLE = "CAD_NODE_ADMIN_TOKEN_SHA256"
SHA256_FILE_VARIABLE = "CAD_NODE_ADMIN_TOKEN_SHA256_FILE"
NAME_VARIABLE = "CAD_NODE_ADMIN_TOKEN_NAME"
RUNTIME_DIR_VARIABLE = "CAD_NODE_RUNTIME_DIR"
DEFAULT_TOKEN_NAME = "admin"
DEFAULT_RUNTIME_DIR = "/tmp/cad-node"
EXIT_CONFIG_ERROR = 2
_SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")


class EntrypointError(Exception):
    """A setting this entrypoint cannot use; the message names it."""


def token_sha256(environ: dict[str, str]) -> str | None:
    """The admin token's sha256 from the environment or its secret file, or ``None``."""
    value = environ.get(SHA256_VARIABLE, "")
    source = SHA256_VARIABLE
    secret_file = environ.get(SHA256_FILE_VARIABLE, "")
    if secret_file:
        try:
            value = Path(secret_file).read_text(encoding="utf-8")
        except OSError as exc:
            message = f"{SHA256_FILE_VARIABLE}: cannot read {secret_file}: {exc.strerror}"
            raise EntrypointError(message) from exc
        source = f"{SHA256_FILE_VARIABLE} ({secret_file})"
    words = value.split()
    if not words:
        return None
    digest = words[0].lower()
    if not _SHA256_HEX.match(digest):
        raise EntrypointError(
            f'{source} is not a sha256 (64 hex digits); make it with printf %s "$TOKEN" | sha256sum'
        )
    if digest in WEAK_TOKEN_SHA256:
        raise EntrypointError(
            f"{source} is the sha256 of a well-known token, which anyone can guess; make "
            "one with python3 -c 'import secrets; print(secrets.token_urlsafe(32))'"
        )
    return digest


def config_argument(command: list[str]) -> tuple[int, Path]:
    """Where ``--config PATH`` (or ``--config=PATH``) sits in ``command``, and the path."""
    for index, word in enumerate(command):
        if word == "--config" and index + 1 < len(command):
            return index + 1, Path(command[index + 1])
        if word.startswith("--config="):
            return index, Path(word.removeprefix("--config="))
    raise EntrypointError(f"{SHA256_VARIABLE} is set but the command has no --config FILE")


def with_admin_token(config: Path, name: str, digest: str) -> dict[str, Any]:
    """The YAML of ``config`` with the token appended to ``admin.tokens``.

    ``config`` is validated first (the node's own loader: errors name its lines), and a
    relative ``rules`` path is made absolute, as the copy lives in another folder.
    """
    load_settings(config)
    data: dict[str, Any] = yaml.safe_load(config.read_text(encoding="utf-8")) or {}
    admin = dict(data.get("admin") or {})
    tokens = list(admin.get("tokens") or [])
    if any(isinstance(token, dict) and token.get("name") == name for token in tokens):
        raise EntrypointError(f"{config}: admin.tokens already has a token named {name!r}")
    tokens.append({"name": name, "role": "admin", "sha256": digest})
    admin["tokens"] = tokens
    data["admin"] = admin
    rules = data.get("rules")
    if isinstance(rules, str) and not Path(rules).is_absolute():
        data["rules"] = str((config.parent / rules).resolve())
    return data


def write_runtime_config(data: dict[str, Any], runtime_dir: Path) -> Path:
    """``data`` as ``node.yaml`` in ``runtime_dir`` (0700), readable by this user only."""
    runtime_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = runtime_dir / "node.yaml"
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(descriptor, 0o600)  # a file left by an earlier start keeps no wider mode
    with os.fdopen(descriptor, "w", encoding="utf-8") as file:
        file.write(
            "# Written by cad-node-entrypoint: the mounted node.yaml plus the admin token.\n"
        )
        yaml.safe_dump(data, file, sort_keys=False)
    return path


def prepared_command(command: list[str], environ: dict[str, str]) -> list[str]:
    """``command``, its ``--config`` pointing at a copy that holds the admin token."""
    digest = token_sha256(environ)
    if digest is None:
        return command
    index, config = config_argument(command)
    name = environ.get(NAME_VARIABLE) or DEFAULT_TOKEN_NAME
    runtime_dir = Path(environ.get(RUNTIME_DIR_VARIABLE) or DEFAULT_RUNTIME_DIR)
    if (runtime_dir / "node.yaml").resolve() == config.resolve():
        raise EntrypointError(f"{RUNTIME_DIR_VARIABLE} must not be the folder of {config}")
    data = with_admin_token(config, name, digest)
    runtime = write_runtime_config(data, runtime_dir)
    prepared = list(command)
    prepared[index] = str(runtime) if prepared[index] == str(config) else f"--config={runtime}"
    return prepared


def main(argv: list[str]) -> int:
    command = argv or ["cad-node", "serve", "--config", "/etc/cad-node/node.yaml"]
    try:
        prepared = prepared_command(command, dict(os.environ))
    except (EntrypointError, ConfigError) as exc:
        print(f"cad-node-entrypoint: error: {exc}", file=sys.stderr)
        return EXIT_CONFIG_ERROR
    sys.stdout.flush()
    os.execvp(prepared[0], prepared)
    return EXIT_CONFIG_ERROR  # not reached: execvp replaces this process or raises


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
