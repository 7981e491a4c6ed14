"""A real OpenID provider for the OAuth tests, and the tokens and logins they need.

- `Provider`: oidc/provider.mjs (the `oidc-provider` package, pinned in oidc/package-lock.json and
  installed with `npm ci` once per lock file beside the test venv) on 127.0.0.1. It issues JWT
  access tokens for one resource (`aud` = `audience`, also when the client names no resource),
  signed with keys the test gives it, so the test can mint tokens of its own with the same keys.
  Open dynamic client registration; any login name is an account (`sub` = that name), password
  `PASSWORD`. `restart(keys)` rotates keys: the same port, a new process.
- `make_key`/`make_keys`, `mint`, `decode`, `public_pem`: keys and hand-made JWTs, good ones and
  the classic forgeries (`alg: none`, HS256 keyed with the RSA public key).
- `browser_login`: what a person does in the browser, with plain HTTP and no browser.
- `mistral_oauth_token`: the Mistral SDK's OAuth flow, step by step as its docs show it.
"""

import base64
import hashlib
import hmac
import json
import os
import queue
import shutil
import subprocess
import threading
import time
import uuid
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import urljoin, urlsplit

import httpx2 as httpx
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

OIDC = Path(__file__).resolve().parent / "oidc"
PASSWORD = "test"
START_TIMEOUT = 60


def ensure_node_modules():
    """The folder holding oidc-provider's node_modules and a copy of provider.mjs (ES modules
    find their packages only in a node_modules beside or above them)."""
    from conftest import npm_install

    dest = npm_install(OIDC, "oidc-provider", scripts=False)
    script = (OIDC / "provider.mjs").read_bytes()
    target = dest / "provider.mjs"
    if not target.exists() or target.read_bytes() != script:
        tmp = dest / f"provider.mjs.{os.getpid()}"
        tmp.write_bytes(script)
        tmp.replace(target)
    return dest


# --- keys and tokens ---------------------------------------------------------------------------


def _b64(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text):
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _int(value, length=None):
    return _b64(value.to_bytes(length or (value.bit_length() + 7) // 8, "big"))


def _to_int(text):
    return int.from_bytes(_unb64(text), "big")


def make_key(alg="RS256", kid=None):
    """A new private JWK for `alg` (RS256/RS384/RS512/PS256: RSA 2048; ES256: EC P-256) with
    `kid` (a random one if None), `alg` and `use: sig`."""
    kid = kid or f"{alg.lower()}-{uuid.uuid4().hex[:8]}"
    if alg.startswith(("RS", "PS")):
        private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        n = private.private_numbers()
        jwk = {
            "kty": "RSA", "n": _int(n.public_numbers.n), "e": _int(n.public_numbers.e), "d": _int(n.d),
            "p": _int(n.p), "q": _int(n.q), "dp": _int(n.dmp1), "dq": _int(n.dmq1), "qi": _int(n.iqmp),
        }
    elif alg == "ES256":
        private = ec.generate_private_key(ec.SECP256R1())
        n = private.private_numbers()
        jwk = {
            "kty": "EC", "crv": "P-256", "x": _int(n.public_numbers.x, 32),
            "y": _int(n.public_numbers.y, 32), "d": _int(n.private_value, 32),
        }
    else:
        raise ValueError(f"no key for {alg}")
    return {**jwk, "kid": kid, "alg": alg, "use": "sig"}


def make_keys(*algs):
    """One new private JWK per alg, RS256 and ES256 if none are named."""
    return [make_key(alg) for alg in algs or ("RS256", "ES256")]


def public_jwk(key):
    """The public half of a private JWK, as a JWKS endpoint publishes it."""
    return {k: v for k, v in key.items() if k not in ("d", "p", "q", "dp", "dq", "qi")}


def _private_key(key):
    if key["kty"] == "RSA":
        public = rsa.RSAPublicNumbers(_to_int(key["e"]), _to_int(key["n"]))
        return rsa.RSAPrivateNumbers(
            _to_int(key["p"]), _to_int(key["q"]), _to_int(key["d"]), _to_int(key["dp"]),
            _to_int(key["dq"]), _to_int(key["qi"]), public,
        ).private_key()
    public = ec.EllipticCurvePublicNumbers(_to_int(key["x"]), _to_int(key["y"]), ec.SECP256R1())
    return ec.EllipticCurvePrivateNumbers(_to_int(key["d"]), public).private_key()


def public_pem(key):
    """The public key of a JWK as PEM bytes (SubjectPublicKeyInfo): the 'secret' of the
    HS256 key-confusion forgery."""
    return _private_key(key).public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


_HASHES = {"256": hashes.SHA256, "384": hashes.SHA384, "512": hashes.SHA512}


def mint(key, claims, headers=None):
    """A compact JWS of `claims`. The header is {"alg": key's alg, "typ": "at+jwt", "kid": key's
    kid} updated with `headers`; a header set to None is left out. How it is signed follows the
    header's alg, whatever the key says it is for:
      - "none": no signature (key is ignored, may be None);
      - "HS256/384/512": HMAC with `key` as the secret (bytes or str; e.g. public_pem(rsa_key),
        or json.dumps(public_jwk(rsa_key))), no kid unless given in `headers`;
      - "RS*", "PS*", "ES256": with the private JWK `key`."""
    alg = (headers or {}).get("alg") or (key.get("alg") if isinstance(key, dict) else None)
    header = {"alg": alg, "typ": "at+jwt"}
    if isinstance(key, dict):
        header["kid"] = key["kid"]
    header.update(headers or {})
    header = {k: v for k, v in header.items() if v is not None}
    alg = header.get("alg", "none")
    signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}".encode()
    if alg == "none":
        signature = b""
    elif alg.startswith("HS"):
        secret = key.encode() if isinstance(key, str) else key
        signature = hmac.new(secret, signing_input, getattr(hashlib, f"sha{alg[2:]}")).digest()
    elif alg.startswith("RS"):
        signature = _private_key(key).sign(signing_input, padding.PKCS1v15(), _HASHES[alg[2:]]())
    elif alg.startswith("PS"):
        digest = _HASHES[alg[2:]]()
        pss = padding.PSS(mgf=padding.MGF1(digest), salt_length=digest.digest_size)
        signature = _private_key(key).sign(signing_input, pss, digest)
    elif alg == "ES256":
        r, s = decode_dss_signature(_private_key(key).sign(signing_input, ec.ECDSA(hashes.SHA256())))
        signature = r.to_bytes(32, "big") + s.to_bytes(32, "big")
    else:
        raise ValueError(f"cannot sign with {alg}")
    return f"{signing_input.decode()}.{_b64(signature)}"


def decode(token):
    """(header, claims) of a compact JWS, not verified."""
    header, claims, _ = token.split(".")
    return json.loads(_unb64(header)), json.loads(_unb64(claims))


# --- the provider ------------------------------------------------------------------------------


class Provider:
    """oidc/provider.mjs as a context manager. `Provider(audience, scopes, keys).start()` (or
    `with Provider(...) as p:`) returns once it serves; then `p.issuer` is http://127.0.0.1:PORT.
    `options` are the other fields of provider.mjs's config (default_scope, extra_audiences, alg,
    sign_kid, password, access_token_ttl)."""

    def __init__(self, audience, scopes=(), keys=None, port=0, **options):
        self.audience = audience
        self.scopes = list(scopes)
        self.keys = list(keys) if keys else make_keys("RS256")
        self.port = port
        self.options = options
        self.issuer = None
        self.log = []
        self._process = None

    @property
    def config(self):
        return {"port": self.port, "audience": self.audience, "scopes": self.scopes, "keys": self.keys, **self.options}

    @property
    def jwks_uri(self):
        return f"{self.issuer}/jwks"

    @property
    def password(self):
        return self.options.get("password", PASSWORD)

    def metadata(self):
        """The provider's metadata document: what toolhost mirrors at its
        /.well-known/oauth-authorization-server (the provider serves the same document there and
        at /.well-known/openid-configuration)."""
        return httpx.get(f"{self.issuer}/.well-known/oauth-authorization-server", timeout=10).json()

    def jwks(self):
        return httpx.get(self.jwks_uri, timeout=10).json()

    def claims(self, sub="alice", **overrides):
        """Claims shaped like the provider's own access tokens (iss, sub, aud, scope, client_id,
        iat, exp, jti), for `mint`; `overrides` replace or add claims, None removes one."""
        now = int(time.time())
        claims = {
            "jti": uuid.uuid4().hex, "sub": sub, "iat": now, "exp": now + 600, "scope": " ".join(self.scopes),
            "client_id": "minted", "iss": self.issuer, "aud": self.audience,
        }
        claims.update(overrides)
        return {k: v for k, v in claims.items() if v is not None}

    def start(self):
        node = shutil.which("node")
        assert node, "node is not installed: the OAuth tests need Node.js and npm"
        folder = ensure_node_modules()
        env = {**os.environ, "OIDC_PROVIDER_CONFIG": json.dumps(self.config)}
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            self.log = []
            process = subprocess.Popen(
                [node, str(folder / "provider.mjs")], cwd=folder, env=env, stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            )
            lines = queue.Queue()
            threading.Thread(target=_pump, args=(process.stdout, lines.put), daemon=True).start()
            threading.Thread(target=_pump, args=(process.stderr, self.log.append), daemon=True).start()
            try:
                line = lines.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                line = None
            if line and line.startswith("READY "):
                break
            process.kill()
            process.wait()
            time.sleep(0.2)  # let the stderr pump finish
            # A port just let go may be busy a moment; try again on it until the deadline.
            if any("EADDRINUSE" in entry for entry in self.log) and time.monotonic() < deadline:
                time.sleep(0.2)
                continue
            raise AssertionError("the OpenID provider did not start:\n" + "\n".join(self.log))
        self._process = process
        self.issuer = line.split()[1]
        self.port = int(urlsplit(self.issuer).port)
        return self.issuer

    def stop(self):
        if self._process is not None:
            self._process.terminate()
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
            self._process = None

    def restart(self, keys=None, **options):
        """Stops it and starts it again on the same port (same issuer), with `keys` in place of
        the old ones (the first of them signs) and `options` updated. Clients, grants and
        sessions do not survive it."""
        self.stop()
        if keys is not None:
            self.keys = list(keys)
        self.options.update(options)
        return self.start()

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.stop()


def _pump(stream, put):
    for line in stream:
        put(line.rstrip("\n"))


def start_provider(audience, scopes=(), keys=None, port=0, **options):
    """A started Provider (see Provider); stop it with .stop()."""
    provider = Provider(audience, scopes, keys, port, **options)
    provider.start()
    return provider


# --- the browser -------------------------------------------------------------------------------


class LoginError(AssertionError):
    pass


class _Forms(HTMLParser):
    def __init__(self):
        super().__init__()
        self.forms = []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "form":
            self.forms.append({"action": attrs.get("action", ""), "method": attrs.get("method", "get"), "inputs": {}})
        elif tag == "input" and self.forms and attrs.get("name"):
            self.forms[-1]["inputs"][attrs["name"]] = attrs.get("value") or ""


def browser_login(login_url, username, password=PASSWORD, consent=True, timeout=10):
    """Walks the provider's pages from the authorization URL as a person in a browser would:
    follows redirects (keeping cookies), fills in the login form, then allows (or with
    consent=False denies) the consent form. Returns the URL of the first redirect away from the
    provider, i.e. REDIRECT_URI?code=...&state=... (or ?error=...), without requesting it.
    Raises LoginError when a page is neither a redirect nor a form (a wrong password: 401)."""
    origin = urlsplit(login_url)[:2]
    with httpx.Client(follow_redirects=False, timeout=timeout) as browser:
        method, url, data = "GET", login_url, None
        for _ in range(20):
            response = browser.request(method, url, data=data)
            if response.is_redirect:
                url = urljoin(url, response.headers["location"])
                if urlsplit(url)[:2] != origin:
                    return url
                method, data = "GET", None
                continue
            if response.status_code != 200:
                raise LoginError(f"{method} {url}: {response.status_code}\n{response.text}")
            parser = _Forms()
            parser.feed(response.text)
            if not parser.forms:
                raise LoginError(f"{method} {url}: no form\n{response.text}")
            form = parser.forms[0]
            if "login" in form["inputs"]:
                data = {**form["inputs"], "login": username, "password": password}
            else:
                form = parser.forms[0] if consent else parser.forms[-1]
                data = form["inputs"]
            method, url = form["method"].upper(), urljoin(url, form["action"])
        raise LoginError(f"no redirect away from the provider after 20 steps from {login_url}")


# --- the Mistral SDK ---------------------------------------------------------------------------


async def mistral_oauth_token(sse_url, redirect_url, username, password=PASSWORD, scope=None):
    """The Mistral SDK's OAuth flow for an SSE server, as its docs show it, with browser_login as
    the person. Returns (client, token): an MCPClientSSE with its token set, and the token
    (authlib's OAuth2Token: access_token, token_type, expires_in, scope?, refresh_token?)."""
    from mistralai.extra.mcp.auth import build_oauth_params
    from mistralai.extra.mcp.sse import MCPClientSSE, SSEServerParams

    client = MCPClientSSE(sse_params=SSEServerParams(url=sse_url))
    assert await client.requires_auth(), f"GET {sse_url} without a token did not answer 401"
    oauth_params = await build_oauth_params(client.base_url, redirect_url=redirect_url, scope=scope)
    client.set_oauth_params(oauth_params=oauth_params)
    login_url, state = await client.get_auth_url_and_state(redirect_url)
    callback_url = browser_login(login_url, username, password)
    if "code=" not in urlsplit(callback_url).query:
        raise LoginError(f"the provider sent no code: {callback_url}")
    token = await client.get_token_from_auth_response(callback_url, redirect_url=redirect_url, state=state)
    client.set_auth_token(token)
    return client, token
