"""TLS and mutual TLS on the controller's port, with real certificates (made by
trustme for this test run) and real handshakes: a caller without the CA's trust, or
without a client certificate when one is required, never reaches a handler."""

from __future__ import annotations

import asyncio
import os
import pathlib
import subprocess
import sys
from typing import Any

import pytest
import trustme

from elastiq import envvars, rpc
from elastiq.controller.server import Controller, ServerConfig
from tests.live_controller import OPERATOR_TOKEN, Session, with_controller


@pytest.fixture
def pki(tmp_path: pathlib.Path) -> dict[str, str]:
    """A CA, a server certificate for 127.0.0.1, a client certificate; PEM files."""
    ca = trustme.CA()
    server = ca.issue_cert("127.0.0.1", "localhost")
    client = ca.issue_cert("node-a")
    rogue = trustme.CA().issue_cert("node-a")  # signed by another CA
    files = {
        "ca": ca.cert_pem,
        "server_cert": server.cert_chain_pems[0],
        "server_key": server.private_key_pem,
        "client_cert": client.cert_chain_pems[0],
        "client_key": client.private_key_pem,
        "rogue_cert": rogue.cert_chain_pems[0],
        "rogue_key": rogue.private_key_pem,
    }
    paths = {}
    for name, blob in files.items():
        path = tmp_path / f"{name}.pem"
        blob.write_to_path(str(path))
        path.chmod(0o600)
        paths[name] = str(path)
    return paths


def _tls_server(pki: dict[str, str], mutual: bool) -> ServerConfig:
    return ServerConfig(
        tls_cert=pki["server_cert"],
        tls_key=pki["server_key"],
        tls_client_ca=pki["ca"] if mutual else "",
    )


async def _unreachable(address: str, tls: rpc.TlsFiles | None) -> None:
    session = Session(address, tls)
    try:
        with pytest.raises(rpc.RpcRetryable):
            await session.register()
    finally:
        await session.close()


def test_mutual_tls_admits_only_clients_with_a_certificate_from_the_ca(
    pki: dict[str, str],
) -> None:
    async def body(controller: Controller, session: Session) -> None:
        address = f"127.0.0.1:{controller.port}"
        agent = Session(
            address, rpc.TlsFiles(ca=pki["ca"], cert=pki["client_cert"], key=pki["client_key"])
        )
        try:
            reply = await agent.register()
            assert reply.node_secret
        finally:
            await agent.close()
        await _unreachable(address, None)  # plaintext
        await _unreachable(address, rpc.TlsFiles(ca=pki["ca"]))  # no client certificate
        rogue = rpc.TlsFiles(ca=pki["ca"], cert=pki["rogue_cert"], key=pki["rogue_key"])
        await _unreachable(address, rogue)
        assert controller.job is not None and list(controller.job.nodes) == ["node-a"]

    with_controller(body, server=_tls_server(pki, mutual=True))


def test_status_over_tls_from_the_cli(pki: dict[str, str], tmp_path: pathlib.Path) -> None:
    token_file = tmp_path / "operator.token"
    token_file.write_text(OPERATOR_TOKEN)
    token_file.chmod(0o600)

    async def body(controller: Controller, session: Session) -> None:
        def status(*extra: str) -> Any:
            address = f"127.0.0.1:{controller.port}"
            command = [sys.executable, "-m", "elastiq.cli", "status", "--json"]
            command += ["--token-file", str(token_file), "--controller", address, *extra]
            return subprocess.run(
                command,
                capture_output=True,
                text=True,
                timeout=60,
                env={k: v for k, v in os.environ.items() if k not in envvars.ALL},
            )

        ok = await asyncio.to_thread(status, "--tls-ca", pki["ca"])
        assert ok.returncode == 0, ok.stderr
        assert '"job": "input-test"' in ok.stdout
        plain = await asyncio.to_thread(status)
        assert plain.returncode != 0

    with_controller(body, server=_tls_server(pki, mutual=False))


def test_a_token_file_readable_by_others_is_refused(tmp_path: pathlib.Path) -> None:
    from elastiq.secret_files import read_token

    path = tmp_path / "agent.token"
    path.write_text("a-token-of-at-least-16-chars")
    path.chmod(0o644)
    with pytest.raises(ValueError, match="chmod 600"):
        read_token(str(path), envvars.AGENT_TOKEN, "agent")
    path.chmod(0o600)
    assert read_token(str(path), envvars.AGENT_TOKEN, "agent") == "a-token-of-at-least-16-chars"
