"""TLS against real etcd servers started with certificates the harness generates at run time:
server-verified TLS and mutual TLS with paths (`str`, `os.PathLike`) and PEM `bytes`, the
system roots for `https://` endpoints, the server name override, every error a user can act on
(each a documented exception class), a restart over mutual TLS, and no secret in the logs."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable

import pytest

import etcd_registry
from etcd_registry import InvalidArgument, Registry, RegistryConnectionError, TlsError

from conftest import DEADLINE, Etcd, Recorder, eventually, run_python

CLIENT_CN = "etcd-registry-client"


@pytest.fixture
def mtls_etcd(etcd_factory: Callable[..., Etcd]) -> Etcd:
    """An etcd that requires client certificates signed by the harness's CA."""
    return etcd_factory("--client-cert-auth")


def files(server: Etcd) -> dict[str, str]:
    assert server.tls is not None, "started without --tls"
    return server.tls


def mtls(server: Etcd, **overrides: Any) -> dict[str, Any]:
    f = files(server)
    kwargs: dict[str, Any] = {"tls_ca": f["ca"], "tls_cert": f["client_cert"], "tls_key": f["client_key"]}
    kwargs.update(overrides)
    return kwargs


def register_list_watch(reg: Registry, name: str) -> None:
    events = Recorder()
    watch = reg.watch("api", on_event=events)
    handle = reg.register("api", name, {"address": "10.0.0.5:80"})
    assert handle.wait(DEADLINE)
    assert name in [n.name for n in reg.list("api")]
    events.wait_for(f"the watch to see {name}", lambda e: e.kind == "added" and e.node is not None and e.node.name == name)
    handle.unregister()
    watch.close()


def first_list_error(server: Etcd, **kwargs: Any) -> etcd_registry.RegistryError:
    with Registry(server.endpoints, base_path="/tls", timeout=10.0, **kwargs) as reg:
        with pytest.raises(etcd_registry.RegistryError) as caught:
            reg.list("api")
    return caught.value


def test_server_verified_tls_with_a_server_name(etcd_factory: Callable[..., Etcd]) -> None:
    server = etcd_factory("--tls")
    ca = files(server)["ca"]
    with Registry(server.endpoints, base_path="/tls", tls_ca=ca) as reg:
        register_list_watch(reg, "by-ip")
    https = [f"https://{e}" for e in server.endpoints]
    with Registry(https, base_path="/tls", tls_ca=Path(ca), tls_server_name="etcd.test") as reg:
        register_list_watch(reg, "by-name")
    assert server.get_prefix("/tls/") == {}


def test_mutual_tls_with_paths_and_pem_bytes(mtls_etcd: Etcd) -> None:
    f = files(mtls_etcd)
    with Registry(mtls_etcd.endpoints, base_path="/tls", **mtls(mtls_etcd)) as reg:
        register_list_watch(reg, "str-paths")
    pem = {k: Path(f[v]).read_bytes() for k, v in
           [("tls_ca", "ca"), ("tls_cert", "client_cert"), ("tls_key", "client_key")]}
    with Registry(mtls_etcd.endpoints, base_path="/tls", tls_ca=pem["tls_ca"], tls_cert=pem["tls_cert"],
                  tls_key=pem["tls_key"]) as reg:
        register_list_watch(reg, "pem-bytes")
    # Any bytes-like object.
    with Registry(mtls_etcd.endpoints, base_path="/tls", tls_ca=bytearray(pem["tls_ca"]),
                  tls_cert=memoryview(pem["tls_cert"]), tls_key=pem["tls_key"]) as reg:
        register_list_watch(reg, "bytes-like")
    with Registry(mtls_etcd.endpoints, base_path="/tls",
                  **mtls(mtls_etcd, tls_cert=Path(f["client_cert"]), tls_key=Path(f["client_key"]))) as reg:
        register_list_watch(reg, "pathlike")


def test_client_cert_auth_cn_as_user_and_password_over_tls(mtls_etcd: Etcd) -> None:
    mtls_etcd.cmd("enable-auth", CLIENT_CN, "tls-pw")
    with Registry(mtls_etcd.endpoints, base_path="/tls", **mtls(mtls_etcd)) as reg:
        register_list_watch(reg, "by-cert")
    with Registry(mtls_etcd.endpoints, base_path="/tls", username=CLIENT_CN, password="tls-pw",
                  **mtls(mtls_etcd)) as reg:
        register_list_watch(reg, "by-password")
    err = first_list_error(mtls_etcd, username=CLIENT_CN, password="wrong", **mtls(mtls_etcd))
    assert isinstance(err, etcd_registry.AuthError), err


def test_handshake_failures_raise_tls_error(mtls_etcd: Etcd) -> None:
    f = files(mtls_etcd)
    err = first_list_error(mtls_etcd, **mtls(mtls_etcd, tls_ca=f["other_ca"]))
    assert isinstance(err, TlsError) and isinstance(err, RegistryConnectionError), repr(err)
    assert isinstance(err, ConnectionError)
    assert "certificate verify failed" in str(err) and mtls_etcd.endpoints[0] in str(err), err
    assert err.kind == "tls"

    err = first_list_error(mtls_etcd, **mtls(mtls_etcd, tls_server_name="wrong.test"))
    assert isinstance(err, TlsError) and "hostname mismatch" in str(err), err

    err = first_list_error(mtls_etcd, tls_ca=f["ca"])
    assert isinstance(err, TlsError) and "requires a client certificate" in str(err), err

    err = first_list_error(mtls_etcd, **mtls(mtls_etcd, tls_cert=f["expired_client_cert"],
                                              tls_key=f["expired_client_key"]))
    assert isinstance(err, TlsError) and "rejected the client certificate" in str(err), err

    # A registration reports it as its first attempt's error.
    with Registry(mtls_etcd.endpoints, base_path="/tls", backoff_min=0.2, backoff_max=1.0,
                  **mtls(mtls_etcd, tls_ca=f["other_ca"])) as reg:
        with pytest.raises(TlsError):
            reg.register("api", "n1").wait(DEADLINE)


def test_expired_server_certificate(etcd_factory: Callable[..., Etcd]) -> None:
    server = etcd_factory("--tls-expired-server")
    err = first_list_error(server, tls_ca=files(server)["ca"])
    assert isinstance(err, TlsError) and "expired" in str(err), err


def test_https_without_a_ca_uses_the_system_roots(mtls_etcd: Etcd) -> None:
    f = files(mtls_etcd)
    code = """
import sys, etcd_registry
with etcd_registry.Registry([sys.argv[1]], base_path="/tls", tls_cert=sys.argv[2], tls_key=sys.argv[3]) as reg:
    try:
        print(len(reg.list("api")))
    except etcd_registry.TlsError as e:
        print("TlsError", e)
"""
    args = (f"https://{mtls_etcd.endpoints[0]}", f["client_cert"], f["client_key"])
    # The test CA is not among the system's roots...
    out = run_python(code, *args)
    assert "TlsError" in out.stdout and "unknown issuer" in out.stdout, out
    # ...but it is once the system's root file is it (SSL_CERT_FILE, as OpenSSL reads it).
    out = run_python(code, *args, env={"SSL_CERT_FILE": f["ca"]})
    assert out.returncode == 0 and out.stdout.strip() == "0", out


def test_unusable_tls_arguments(tmp_path: Path, mtls_etcd: Etcd) -> None:
    f = files(mtls_etcd)
    eps = mtls_etcd.endpoints
    with pytest.raises(InvalidArgument, match="missing.pem"):
        Registry(eps, tls_ca=str(tmp_path / "missing.pem"))
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not PEM\n")
    with pytest.raises(InvalidArgument, match="garbage.pem"):
        Registry(eps, tls_ca=garbage)
    with pytest.raises(InvalidArgument, match="in memory"):
        Registry(eps, tls_ca=b"-----BEGIN CERTIFICATE-----\nnot base64!\n")
    with pytest.raises(InvalidArgument, match="does not fit"):
        Registry(eps, **mtls(mtls_etcd, tls_key=f["other_client_key"]))
    with pytest.raises(InvalidArgument, match="without its key"):
        Registry(eps, tls_ca=f["ca"], tls_cert=f["client_cert"])
    with pytest.raises(InvalidArgument):
        Registry([f"http://{eps[0]}"], tls_ca=f["ca"])
    for wrong in (42, [45, 45], (1, 2)):
        with pytest.raises(TypeError, match="tls_ca must be a path"):
            Registry(eps, tls_ca=wrong)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        Registry(eps, tls_server_name=b"etcd.test")  # type: ignore[arg-type]


def test_restart_over_mtls_recovers(etcd_factory: Callable[..., Etcd]) -> None:
    server = etcd_factory("--client-cert-auth", "--proxy")
    with Registry(server.endpoints, base_path="/tls", timeout=2.0, backoff_min=0.2, backoff_max=1.0,
                  **mtls(server)) as reg:
        events = Recorder()
        handle = reg.register("api", "n1", ttl=3.0, on_status=events)
        assert handle.wait(DEADLINE)
        server.cmd("kill", 0)
        server.cmd("restart", 0)
        events.wait_kind("reregistered")
        server.cmd("partition")
        start = events.wait_kind("keepalive_lost", 2)
        eventually("the lease to expire", lambda: server.cmd("lease-count") == 0)
        server.cmd("heal")
        events.wait_kind("reregistered", start)
        eventually("the node back", lambda: list(server.get_prefix("/tls/")) == ["/tls/api/n1"])


def test_no_password_or_key_in_logs_or_errors(mtls_etcd: Etcd, caplog: pytest.LogCaptureFixture) -> None:
    f = files(mtls_etcd)
    password = "py-tls-secret-pw"
    mtls_etcd.cmd("enable-auth", CLIENT_CN, password)
    caplog.set_level(logging.DEBUG, logger="etcd_registry")
    texts: list[str] = []
    with Registry(mtls_etcd.endpoints, base_path="/tls", username=CLIENT_CN, password=password,
                  **mtls(mtls_etcd)) as reg:
        register_list_watch(reg, "secret")
    texts.append(str(first_list_error(mtls_etcd, username=CLIENT_CN, password=password * 2, **mtls(mtls_etcd))))
    texts.append(str(first_list_error(mtls_etcd, username=CLIENT_CN, password=password,
                                      **mtls(mtls_etcd, tls_ca=f["other_ca"]))))
    key = Path(f["client_key"]).read_bytes()
    with pytest.raises(InvalidArgument) as caught:
        Registry(mtls_etcd.endpoints, tls_ca=key)
    texts.append(str(caught.value))
    with pytest.raises(InvalidArgument) as caught:
        Registry(mtls_etcd.endpoints, tls_cert=Path(f["other_client_cert"]).read_bytes(), tls_key=key)
    texts.append(str(caught.value))
    # Records reach `logging` through the dispatch thread: wait for them, then read the text.
    eventually("the library logged something",
               lambda: any(r.name == "etcd_registry" for r in caplog.records))
    texts.append(caplog.text)
    key_lines = [line for line in key.decode().splitlines() if not line.startswith("-----") and len(line) > 16]
    assert key_lines
    for text in texts:
        assert password not in text
        for line in key_lines:
            assert line not in text
