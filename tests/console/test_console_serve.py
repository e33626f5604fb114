"""The console served by uvicorn in the control plane's event loop: HTTPS with a certificate (the
session cookie is then ``Secure``), a clear error when the port is taken, a clean stop."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import re
import socket
import ssl
from pathlib import Path

import httpx
import pytest
from console_harness import console_env
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from controlplane.console.serve import ConsoleServer


def self_signed(directory: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "console.crt", directory / "console.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def test_https_console_sets_secure_cookies(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)

    async def body() -> None:
        async with console_env(tmp_path) as env:
            token = await env.token("olga", "operator")
            server = ConsoleServer(env.plane, "127.0.0.1", 0, cert, key)
            await server.start()
            assert server.url.startswith("https://127.0.0.1:")
            trust = ssl.create_default_context(cafile=str(cert))
            try:
                async with httpx.AsyncClient(base_url=server.url, verify=trust) as client:
                    form = await client.get("/login")
                    nonce = re.search(r'name="login_csrf" value="([^"]*)"', form.text)
                    assert nonce and "Secure" in form.headers["set-cookie"]
                    done = await client.post(
                        "/login",
                        data={"token": token, "login_csrf": nonce.group(1)},
                        headers={"origin": server.url.rstrip("/")},
                    )
                    assert done.status_code == 303, done.text
                    cookie = done.headers["set-cookie"]
                    assert "Secure" in cookie and "HttpOnly" in cookie
                    assert (await client.get("/")).status_code == 200
            finally:
                await server.stop()
            with pytest.raises(httpx.ConnectError):
                async with httpx.AsyncClient(verify=trust) as client:
                    await client.get(server.url, timeout=2)

    asyncio.run(asyncio.wait_for(body(), 30))


def test_port_in_use_is_a_clear_error(tmp_path: Path) -> None:
    async def body() -> None:
        async with console_env(tmp_path) as env:
            taken = socket.socket()
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            try:
                server = ConsoleServer(env.plane, "127.0.0.1", taken.getsockname()[1])
                with pytest.raises(OSError, match="choose another --console-listen"):
                    await server.start()
            finally:
                taken.close()

    asyncio.run(asyncio.wait_for(body(), 30))
