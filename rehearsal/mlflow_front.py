"""Azure ML's MLflow endpoint, rehearsed: an HTTPS front, with a test CA made at each start, before `mlflow server`.

    python mlflow_front.py UPSTREAM HOST SCOPE      # in the cifar10-mlflow image; token in FRONT_TOKEN

A v2 job's MLFLOW_TRACKING_URI is azureml://HOST/mlflow/v1.0SCOPE (SCOPE: /subscriptions/<sub>/resourceGroups/<rg>/
providers/Microsoft.MachineLearningServices/workspaces/<ws>). azureml-mlflow 1.62.0.post6 serves that scheme with its
AzureMLRestStore (entry_point_loaders.py, azureml_store_builder), which calls MLflow's REST API at
https://HOST/mlflow/v2.0SCOPE/api/2.0/mlflow/... (MLflow 3: _store/azureml_reststore.py, get_host_credentials; the
https:// is _internal/utils.py's, get_service_context_from_tracking_url_mlflow_env_vars) with
`Authorization: Bearer $MLFLOW_TRACKING_TOKEN`. This front answers there: a request without that token is 401, a
path outside SCOPE 404; the rest goes to UPSTREAM (MLflow's own server) with the prefix stripped. GET /_recorded (with
the token) says what was forwarded and what was refused.

At start it prints the CA's certificate (PEM) on stdout: the rehearsal hands it to the job (REQUESTS_CA_BUNDLE) and
probes the front with it. The CA and the server's key live in this container only, for one run.

The host side (start, ca, probe) is the standard library only; the server needs `cryptography` (in the image).
"""

import datetime
import http.client
import json
import os
import re
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

PORT = 443  # https:// with no port: where azureml-mlflow calls
API = r"/mlflow/v[12]\.0"  # the URI's v1.0; the store's v2.0 under MLflow 2 and 3 (azureml_reststore.py)
IMAGE_MLFLOW = os.environ.get("IMAGE_MLFLOW", "cifar10-mlflow:local")
HERE = os.path.abspath(__file__)


class FrontError(Exception):
    pass


# The host's side: start the front beside the stand-in, read its CA, wait until it answers over TLS.


def start(name, network, host, upstream, scope, token):
    """`docker run` of the front as `name` on `network`, answering to `host` there; returns (url, CA PEM)."""
    docker = ["docker", "run", "-d", "--rm", "--name", name, "--network", network, "--network-alias", host]
    docker += ["-p", f"127.0.0.1::{PORT}", "-e", "FRONT_TOKEN", "-v", f"{HERE}:/mlflow_front.py:ro"]
    docker += ["--entrypoint", "python", IMAGE_MLFLOW, "/mlflow_front.py", upstream, host, scope]
    subprocess.run(docker, check=True, stdout=subprocess.DEVNULL, env={**os.environ, "FRONT_TOKEN": token})
    port = subprocess.run(["docker", "port", name, str(PORT)], capture_output=True, text=True).stdout.split()
    if not port:
        raise FrontError(f"the TLS front {name} did not start: {logs(name)}")
    url = "https://" + port[0]
    ca = wait_ready(url, name, token)
    return url, ca


def logs(name):
    got = subprocess.run(["docker", "logs", name], capture_output=True, text=True)
    return got.stdout + got.stderr


def wait_ready(url, name, token, seconds=60):
    """The CA the front printed, once the front answers GET /_recorded over TLS with it."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        ca = re.search(r"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----\n", logs(name), re.S)
        if ca:
            try:
                recorded(url, ca.group(0), token)
                return ca.group(0)
            except OSError:
                pass
        time.sleep(0.5)
    raise FrontError(f"the TLS front {name} did not answer in {seconds} s: {logs(name)[-300:]}")


def recorded(url, ca, token):
    """What the front forwarded and refused, read over TLS with the CA it printed."""
    req = urllib.request.Request(url + "/_recorded", headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(req, timeout=10, context=ssl.create_default_context(cadata=ca)) as r:
        return json.load(r)


# The front: runs in the container.


def certificates(host):
    """(CA certificate, server certificate, server key), PEM: a CA made now and a certificate for host (and
    127.0.0.1, where the host probes it) signed by it; both with the key identifiers strict verifiers ask for."""
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.UTC)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Azure ML rehearsal test CA")])

    def certificate(subject, public_key, *extensions):
        builder = x509.CertificateBuilder().subject_name(subject).issuer_name(ca_name).public_key(public_key)
        builder = builder.serial_number(x509.random_serial_number())
        builder = builder.not_valid_before(now - datetime.timedelta(hours=1))
        builder = builder.not_valid_after(now + datetime.timedelta(days=2))
        builder = builder.add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        for extension, critical in extensions:
            builder = builder.add_extension(extension, critical=critical)
        return builder.sign(ca_key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM).decode()

    ca = certificate(
        ca_name,
        ca_key.public_key(),
        (x509.BasicConstraints(ca=True, path_length=0), True),
        (key_usage(key_cert_sign=True, crl_sign=True), True),
    )
    names = [x509.DNSName(host), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    server = certificate(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)]),
        key.public_key(),
        (x509.BasicConstraints(ca=False, path_length=None), True),
        (key_usage(digital_signature=True), True),
        (x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False),
        (x509.SubjectAlternativeName(names), False),
    )
    pem_key = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    return ca, server, pem_key


def key_usage(**on):
    from cryptography import x509

    names = ("digital_signature", "content_commitment", "key_encipherment", "data_encipherment", "key_agreement")
    names += ("key_cert_sign", "crl_sign", "encipher_only", "decipher_only")
    return x509.KeyUsage(**{name: on.get(name, False) for name in names})


def handler(upstream, scope, token):
    """The request handler: the token first (401), then the workspace's prefix (404), then MLflow's server."""
    target = urlsplit(upstream)
    prefix = re.compile(API + re.escape(scope) + r"(/api/.*)")
    seen = {"forwarded": [], "refused": []}
    lock = threading.Lock()

    class Front(BaseHTTPRequestHandler):
        def do_request(self):
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            if self.headers.get("Authorization") != f"Bearer {token}":
                return self.refuse(401, "UNAUTHENTICATED", "no valid bearer token")
            if self.path.split("?")[0] == "/_recorded":
                with lock:
                    return self.answer(200, "application/json", json.dumps(seen).encode())
            match = prefix.fullmatch(self.path)
            if not match:
                return self.refuse(404, "ENDPOINT_NOT_FOUND", "not under this workspace's MLflow endpoint")
            conn = http.client.HTTPConnection(target.hostname, target.port, timeout=120)
            try:
                headers = {"Content-Type": self.headers.get("Content-Type") or "application/json"}
                conn.request(self.command, match.group(1), body or None, headers)
                got = conn.getresponse()
                self.answer(got.status, got.getheader("Content-Type") or "application/json", got.read())
            finally:
                conn.close()
            with lock:
                seen["forwarded"].append(f"{self.command} {self.path.split('?')[0]}")

        do_GET = do_POST = do_PATCH = do_DELETE = do_PUT = do_request

        def refuse(self, status, code, message):
            with lock:
                seen["refused"].append(f"{status} {self.command} {self.path}")
            self.answer(status, "application/json", json.dumps({"error_code": code, "message": message}).encode())

        def answer(self, status, content_type, data):
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):  # what matters is in /_recorded; stderr stays for errors
            pass

    return Front


def serve(upstream, host, scope, token, port=PORT):
    ca, server_cert, key = certificates(host)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    with tempfile.TemporaryDirectory() as folder:  # load_cert_chain reads files only
        for name, pem in (("cert.pem", server_cert), ("key.pem", key)):
            with open(os.path.join(folder, name), "w") as f:
                f.write(pem)
        context.load_cert_chain(os.path.join(folder, "cert.pem"), os.path.join(folder, "key.pem"))
    server = ThreadingHTTPServer(("0.0.0.0", port), handler(upstream, scope, token))
    # The handshake in each request's thread, not in accept(): a slow client does not hold the others up.
    server.socket = context.wrap_socket(server.socket, server_side=True, do_handshake_on_connect=False)
    print(ca, end="", flush=True)
    server.serve_forever()


def main(argv=None):
    args = argv if argv is not None else sys.argv[1:]
    token = os.environ.get("FRONT_TOKEN")
    if len(args) != 3 or not token:
        print("usage: FRONT_TOKEN=... python mlflow_front.py UPSTREAM HOST SCOPE", file=sys.stderr)
        return 2
    serve(*args, token)


if __name__ == "__main__":
    raise SystemExit(main())
