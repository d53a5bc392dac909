"""Azure AD and ARM as the SDKs' HTTP clients see them, at their one network boundary: requests' adapter.

Both SDKs' logins go out through requests (msal's default http client; azure-core's RequestsTransport under
azure-identity and the subscription listing azureml-core does after a login), so replacing
requests.adapters.HTTPAdapter.send answers every call in the process and lets none reach the network.
The answers have the Microsoft identity platform's shapes: the devicecode and token replies of
https://learn.microsoft.com/entra/identity-platform/v2-oauth2-device-code (with the client_info msal asks
for), the document of https://learn.microsoft.com/entra/identity-platform/v2-protocols-oidc, and ARM's
subscription list. A device code is granted at its first poll.

    python -c "import fake_aad; fake_aad.install(); ..."   # FAKE_AAD_LOG: one JSON line per request
"""

import base64
import importlib
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.parse
from pathlib import Path

import requests

TENANT = "72f988bf-0000-4000-8000-00000000aad1"
OBJECT_ID = "0b0b0b0b-0000-4000-8000-00000000a1c3"
SUBSCRIPTION = "00000000-0000-4000-8000-0000000005b5"
AUTHORITY = "https://login.microsoftonline.com"


DEVICE_CODES = {}  # device code: the scope it was asked for


def b64(data):
    return base64.urlsafe_b64encode(json.dumps(data).encode()).decode().rstrip("=")


def jwt(claims):
    """An unsigned JWT: the SDKs read claims (tid, exp) from tokens and never check a signature."""
    return f"{b64({'alg': 'none', 'typ': 'JWT'})}.{b64(claims)}.c2ln"


def tokens(client_id, scope):
    # Like Azure AD, the reply's scope names the resource's, not the OpenID ones msal adds
    scope = " ".join(s for s in scope.split() if s not in ("offline_access", "openid", "profile"))
    now = int(time.time())
    claims = {"tid": TENANT, "oid": OBJECT_ID, "iat": now, "nbf": now, "exp": now + 3600}
    id_token = {**claims, "aud": client_id, "iss": f"{AUTHORITY}/{TENANT}/v2.0", "sub": OBJECT_ID}
    id_token["preferred_username"] = "someone@example.com"
    return {
        "token_type": "Bearer",
        "scope": scope,
        "expires_in": 3600,
        "ext_expires_in": 3600,
        "access_token": jwt({**claims, "aud": scope.split(" ")[0].removesuffix("/.default"), "upn": "someone"}),
        "refresh_token": f"refresh-{now}",
        "id_token": jwt(id_token),
        "client_info": b64({"uid": OBJECT_ID, "utid": TENANT}),
    }


def openid_configuration(tenant):
    base = f"{AUTHORITY}/{tenant}"
    return {
        "authorization_endpoint": f"{base}/oauth2/v2.0/authorize",
        "token_endpoint": f"{base}/oauth2/v2.0/token",
        "device_authorization_endpoint": f"{base}/oauth2/v2.0/devicecode",
        "issuer": f"{AUTHORITY}/{TENANT}/v2.0",
    }


def answer(method, url, form):
    """(status, JSON body, what to log) for one request."""
    parts = urllib.parse.urlsplit(url)
    path = parts.path
    if path.endswith("/v2.0/.well-known/openid-configuration"):
        return 200, openid_configuration(path.split("/")[1]), "openid-configuration"
    if path.endswith("/discovery/instance"):
        aliases = ["login.microsoftonline.com", "login.windows.net"]
        metadata = [{"preferred_network": aliases[0], "preferred_cache": aliases[1], "aliases": aliases}]
        return 200, {"api-version": "1.1", "metadata": metadata}, "instance-discovery"
    if path.endswith("/oauth2/v2.0/devicecode"):
        message = "To sign in, use a web browser to open https://microsoft.com/devicelogin and enter FAKE-CODE"
        DEVICE_CODES["device-1"] = form.get("scope", "")
        reply = {"device_code": "device-1", "user_code": "FAKE-CODE", "verification_uri": "https://example.com"}
        return 200, {**reply, "expires_in": 900, "interval": 1, "message": message}, "devicecode"
    if path.endswith("/oauth2/v2.0/token"):
        grant = form.get("grant_type", "")
        scope = form.get("scope") or DEVICE_CODES.get(form.get("device_code"), "")  # a device code's: its own
        return 200, tokens(form.get("client_id", ""), scope), f"token:{grant}"
    if parts.netloc == "management.azure.com" and path == "/subscriptions":
        sub = {"id": f"/subscriptions/{SUBSCRIPTION}", "subscriptionId": SUBSCRIPTION, "tenantId": TENANT}
        sub.update(displayName="fake", state="Enabled", subscriptionPolicies={}, authorizationSource="RoleBased")
        return 200, {"value": [sub]}, "arm:subscriptions"
    if parts.netloc == "management.azure.com" and path == "/tenants":
        return 200, {"value": [{"id": f"/tenants/{TENANT}", "tenantId": TENANT}]}, "arm:tenants"
    return 404, {"error": {"code": "NotFound", "message": f"{method} {url}"}}, f"unanswered:{method} {url}"


def install(log=None):
    """Answer every requests call in this process; each one is a line in `log` (FAKE_AAD_LOG)."""
    log = log or os.environ["FAKE_AAD_LOG"]

    def send(adapter, request, **kwargs):
        body = request.body or ""
        body = body.decode() if isinstance(body, bytes) else body
        form = {k: v[0] for k, v in urllib.parse.parse_qs(body).items()}
        status, reply, what = answer(request.method, request.url, form)
        with open(log, "a") as f:
            f.write(json.dumps({"call": what, "scope": form.get("scope", "")}) + "\n")
        response = requests.Response()
        response.status_code, response.url, response.request = status, request.url, request
        response.reason = "OK" if status == 200 else "Not Found"
        response.headers["Content-Type"] = "application/json"
        response._content = json.dumps(reply).encode()
        response.raw = io.BytesIO(response._content)
        response.encoding = "utf-8"
        return response

    requests.adapters.HTTPAdapter.send = send


def calls(log):
    """The logged calls, in order."""
    with open(log) as f:
        return [json.loads(line)["call"] for line in f]


def sign_in(adapter, scopes):
    """What a submit container asks of the login: the adapter's (aml_v1, aml_v2) credential, a token per scope."""
    module = importlib.import_module(adapter)
    credential = module.credential("interactive")
    for scope in scopes:
        module.token(credential, scope)


def in_a_container(tmp, azure_dir, mounts, adapter, scopes, terminal=True):
    """sign_in(adapter, scopes) in a process shaped like a submit container: a HOME of its own, gone afterwards
    (the image's tmpfs /tmp), with only `mounts` (folders under HOME) linked to the one host folder `azure_dir`,
    as compose.yaml mounts ${AZURE_CONFIG_DIR:-~/.azure}; AZURE_TENANT_ID set, a terminal said to be there (or
    none), every HTTP call answered here. Returns the calls it made."""
    home = Path(tempfile.mkdtemp(dir=tmp, prefix="home-"))
    for mount in mounts:
        (home / mount).symlink_to(azure_dir, target_is_directory=True)
    log = home / "calls.jsonl"
    log.touch()
    env = {"PATH": os.environ["PATH"], "HOME": str(home), "AML_TERMINAL": "1" if terminal else "0"}
    env["AZURE_TENANT_ID"] = TENANT
    env.update(FAKE_AAD_LOG=str(log), PYTHONPATH=os.pathsep.join(sys.path))
    code = f"import fake_aad\nfake_aad.install()\nfake_aad.sign_in({adapter!r}, {list(scopes)!r})"
    run = [sys.executable, "-c", code]
    done = subprocess.run(run, env=env, cwd=home, stdin=subprocess.DEVNULL, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    found = calls(log)
    shutil.rmtree(home)
    return found
