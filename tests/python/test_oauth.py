"""toolhost as an OAuth 2.1 protected resource, against a real OpenID provider (oidc-provider,
started here): the Mistral SDK's OAuth flow end to end, then the tools over /sse and /mcp with
the token it got; every way a token can be wrong, each refused on its own; key rotation; two
users kept apart; and the metadata documents clients discover the provider through."""

import json
import time
from contextlib import asynccontextmanager, contextmanager

import httpx2 as httpx
import pytest
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client

from conftest import default_server, free_port, text_block
from oidc_support import Provider, decode, make_key, make_keys, mint, mistral_oauth_token, public_pem

pytestmark = pytest.mark.anyio

SCOPE = "mcp:tools"
STATIC = "static-token-beside-oauth"
REDIRECT = "http://127.0.0.1:9/callback"
INITIALIZE = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}},
}


@contextmanager
def protected_server(tmp_path, keys=None, scopes=(SCOPE,)):
    """A provider and a toolhost that accepts its tokens (and one static token); yields
    (url, provider, log) once toolhost has read the provider's metadata and keys."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with Provider(f"{url}/mcp", [SCOPE, "mcp:admin"], keys or make_keys()) as provider:
        args = ["--oauth-issuer", provider.issuer, "--token", STATIC]
        if scopes:
            args += ["--oauth-scopes", ",".join(scopes)]
        with default_server(tmp_path, *args, port=port) as (url, log):
            log.wait_for("OAuth issuer loaded", 30)
            yield url, provider, log


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with protected_server(tmp_path_factory.mktemp("oauth")) as running:
        yield running


@asynccontextmanager
async def mcp_session(url, access_token):
    headers = {"Authorization": f"Bearer {access_token}"}
    async with httpx.AsyncClient(headers=headers, timeout=httpx.Timeout(30.0, read=120.0)) as http:
        async with streamable_http_client(f"{url}/mcp", http_client=http) as (read, write):
            async with ClientSession(read, write) as session:
                await session.initialize()
                yield session


def post_mcp(url, token=None):
    headers = {"Accept": "application/json, text/event-stream"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    return httpx.post(f"{url}/mcp", json=INITIALIZE, headers=headers, timeout=10)


def assert_refused(response, status, *words):
    assert response.status_code == status, (response.status_code, response.text)
    challenge = response.headers["www-authenticate"]
    assert challenge.startswith("Bearer resource_metadata="), challenge
    assert "/.well-known/oauth-protected-resource/mcp" in challenge, challenge
    for word in words:
        assert word in challenge or word in response.text, (word, challenge, response.text)


async def test_the_mistral_sdk_flow_end_to_end_then_tools_over_sse_and_mcp(server):
    url, provider, log = server
    client, token = await mistral_oauth_token(f"{url}/sse", REDIRECT, "alice")
    header, claims = decode(token["access_token"])
    assert claims["aud"] == f"{url}/mcp" and claims["sub"] == "alice", claims
    await client.initialize()
    try:
        assert "code_interpreter" in {t.function.name for t in await client.get_tools()}
        result = await client.execute_tool("code_interpreter", {"code": "print(6 * 7)"})
        assert "42" in json.dumps(result), result
    finally:
        await client.aclose()
    async with mcp_session(url, token["access_token"]) as session:
        result = await session.call_tool("code_interpreter", {"code": "import os; print(sorted(os.environ))"})
        assert not result.is_error and result.structured_content["status"] == "ok", result
        # The guest sees none of the request: no token in its environment.
        assert token["access_token"] not in json.dumps(result.structured_content)
    assert not any(token["access_token"] in line for line in log.lines), "the token reached the log"
    assert not any(token["access_token"][-20:] in line for line in log.lines), "the token's signature reached the log"


async def test_an_unauthenticated_request_is_told_where_to_find_the_provider(server):
    url, provider, _ = server
    for path in ("/mcp", "/sse"):
        response = httpx.get(f"{url}{path}", timeout=10)
        assert response.status_code == 401, (path, response.status_code)
        challenge = response.headers["www-authenticate"]
        endpoint = path
        assert f'resource_metadata="{url}/.well-known/oauth-protected-resource{endpoint}"' in challenge, challenge
        assert f'scope="{SCOPE}"' in challenge, challenge
    for endpoint in ("", "/mcp", "/sse"):
        metadata = httpx.get(f"{url}/.well-known/oauth-protected-resource{endpoint}", timeout=10).json()
        assert metadata["resource"] == f"{url}{endpoint}", metadata
        assert metadata["authorization_servers"] == [provider.issuer], metadata
        assert metadata["scopes_supported"] == [SCOPE], metadata
    mirror = httpx.get(f"{url}/.well-known/oauth-authorization-server", timeout=10)
    assert mirror.status_code == 200 and mirror.headers["access-control-allow-origin"] == "*"
    assert mirror.content == httpx.get(f"{provider.issuer}/.well-known/openid-configuration").content


def test_no_token_is_refused(server):
    url, _, _ = server
    assert_refused(post_mcp(url), 401, "missing bearer token")


def test_garbage_is_refused(server):
    url, _, _ = server
    assert_refused(post_mcp(url, "not-a-jwt"), 401, 'error="invalid_token"')


def test_a_token_for_another_audience_is_refused(server):
    url, provider, _ = server
    token = mint(provider.keys[0], provider.claims(aud="https://other.example/mcp", scope=SCOPE))
    assert_refused(post_mcp(url, token), 401, 'error="invalid_token"', "another audience")


def test_an_expired_token_is_refused(server):
    url, provider, _ = server
    now = int(time.time())
    token = mint(provider.keys[0], provider.claims(iat=now - 7200, exp=now - 120, scope=SCOPE))
    assert_refused(post_mcp(url, token), 401, "expired")


def test_a_token_not_yet_valid_is_refused(server):
    url, provider, _ = server
    token = mint(provider.keys[0], provider.claims(nbf=int(time.time()) + 600, scope=SCOPE))
    assert_refused(post_mcp(url, token), 401, "not valid yet")


def test_a_token_from_another_issuer_is_refused(server):
    url, provider, _ = server
    token = mint(provider.keys[0], provider.claims(iss="https://evil.example", scope=SCOPE))
    assert_refused(post_mcp(url, token), 401, "another issuer")


def test_a_token_with_a_forged_signature_is_refused(server):
    url, provider, _ = server
    # Signed by another key, but naming the provider's key id.
    forger = make_key("RS256", kid=provider.keys[0]["kid"])
    token = mint(forger, provider.claims(scope=SCOPE))
    assert_refused(post_mcp(url, token), 401, "signature does not verify")
    # A valid token with its claims edited after signing.
    header, payload, signature = mint(provider.keys[0], provider.claims(scope=SCOPE)).split(".")
    edited = mint(provider.keys[0], provider.claims(sub="mallory", scope=SCOPE)).split(".")[1]
    assert_refused(post_mcp(url, f"{header}.{edited}.{signature}"), 401, "signature does not verify")


def test_an_unsigned_token_is_refused(server):
    url, provider, _ = server
    token = mint(provider.keys[0], provider.claims(scope=SCOPE), {"alg": "none"})
    assert_refused(post_mcp(url, token), 401, "signed with none")


def test_hmac_keyed_with_the_public_key_is_refused(server):
    url, provider, _ = server
    key = provider.keys[0]
    token = mint(public_pem(key), provider.claims(scope=SCOPE), {"alg": "HS256", "kid": key["kid"]})
    assert_refused(post_mcp(url, token), 401, "HS256")


def test_a_token_without_the_required_scope_gets_403(server):
    url, provider, _ = server
    token = mint(provider.keys[0], provider.claims(scope="openid mcp:admin"))
    assert_refused(post_mcp(url, token), 403, 'error="insufficient_scope"', SCOPE)


def test_a_static_token_keeps_working_beside_oauth(server):
    url, _, _ = server
    response = post_mcp(url, STATIC)
    assert response.status_code == 200, response.text


async def test_two_users_get_separate_workspaces_and_cannot_name_each_others_sessions(server):
    url, provider, _ = server
    tokens = {}
    for user in ("alice", "bob"):
        client, token = await mistral_oauth_token(f"{url}/sse", REDIRECT, user)
        tokens[user] = token["access_token"]
    assert decode(tokens["alice"])[1]["sub"] != decode(tokens["bob"])[1]["sub"]
    async with mcp_session(url, tokens["alice"]) as alice:
        written = await alice.call_tool("write_file", {"path": "alice.txt", "content": "alice's notes"})
        assert not written.is_error, written
        async with mcp_session(url, tokens["bob"]) as bob:
            listed = await bob.call_tool("list_files", {})
            assert "alice.txt" not in json.dumps(listed.structured_content), listed
            read = await bob.call_tool("read_file", {"path": "alice.txt"})
            assert read.is_error, read
    # Bob naming Alice's session by its id: 404, as if it did not exist.
    opened = post_mcp(url, tokens["alice"])
    assert opened.status_code == 200
    alice_session = opened.headers["mcp-session-id"]
    call = {"jsonrpc": "2.0", "id": 2, "method": "tools/list"}
    for who, status in (("bob", 404), ("alice", 200)):
        response = httpx.post(
            f"{url}/mcp",
            json=call,
            headers={
                "Authorization": f"Bearer {tokens[who]}",
                "Mcp-Session-Id": alice_session,
                "Accept": "application/json, text/event-stream",
                "Mcp-Protocol-Version": "2025-06-18",
            },
            timeout=10,
        )
        assert response.status_code == status, (who, response.status_code, response.text)


async def test_a_key_the_provider_does_not_publish_is_refused_until_it_rotates_in(tmp_path):
    keys = make_keys("RS256")
    with protected_server(tmp_path, keys) as (url, provider, log):
        new = make_key("RS256", kid="rotated-in")
        token = mint(new, provider.claims(scope=SCOPE))
        assert_refused(post_mcp(url, token), 401, "does not publish")
        # The provider publishes the new key (the old one still signs its own tokens).
        provider.restart(keys + [new])
        deadline = time.monotonic() + 30
        while (response := post_mcp(url, token)).status_code != 200 and time.monotonic() < deadline:
            time.sleep(1)
        assert response.status_code == 200, response.text
        old = mint(keys[0], provider.claims(scope=SCOPE))
        assert post_mcp(url, old).status_code == 200


def test_until_the_provider_answers_readyz_says_why_and_requests_are_still_challenged(tmp_path):
    dead = f"http://127.0.0.1:{free_port()}"
    with default_server(tmp_path, "--oauth-issuer", dead) as (url, log):
        ready = httpx.get(f"{url}/readyz", timeout=10)
        assert ready.status_code == 503, ready.text
        assert ready.json()["status"] == "waiting_for_oauth_issuer" and dead in ready.json()["error"], ready.json()
        response = post_mcp(url)
        assert response.status_code == 401 and "resource_metadata" in response.headers["www-authenticate"]
        token = mint(make_key("RS256"), {"iss": dead, "sub": "x", "aud": f"{url}/mcp", "exp": int(time.time()) + 60})
        unavailable = post_mcp(url, token)
        assert unavailable.status_code == 503 and unavailable.headers["retry-after"], unavailable.text
        assert httpx.get(f"{url}/.well-known/oauth-authorization-server", timeout=10).status_code == 503


async def test_the_official_sdk_discovers_the_provider_through_resource_metadata(server):
    """The MCP authorization flow of the official SDK: 401 → RFC 9728 resource metadata →
    the provider's metadata → dynamic registration → PKCE login with `resource` → tools."""
    from urllib.parse import parse_qs, urlsplit

    from mcp.client.auth import OAuthClientProvider
    from mcp.shared.auth import AuthorizationCodeResult, OAuthClientMetadata

    from oidc_support import browser_login

    url, _, _ = server

    class Memory:
        tokens = client = None

        async def get_tokens(self):
            return self.tokens

        async def set_tokens(self, tokens):
            self.tokens = tokens

        async def get_client_info(self):
            return self.client

        async def set_client_info(self, client):
            self.client = client

    callback = {}

    async def redirect(authorization_url):
        callback["url"] = browser_login(authorization_url, "carol")

    async def returned():
        query = parse_qs(urlsplit(callback["url"]).query)
        first = {name: values[0] for name, values in query.items()}
        return AuthorizationCodeResult(code=first["code"], state=first.get("state"), iss=first.get("iss"))

    auth = OAuthClientProvider(
        server_url=f"{url}/mcp",
        client_metadata=OAuthClientMetadata(
            client_name="toolhost-test", redirect_uris=[REDIRECT], grant_types=["authorization_code"], scope=SCOPE
        ),
        storage=Memory(),
        redirect_handler=redirect,
        callback_handler=returned,
    )
    async with httpx.AsyncClient(auth=auth, timeout=httpx.Timeout(30.0, read=120.0)) as http:
        async with streamable_http_client(f"{url}/mcp", http_client=http) as (read, write):
            async with ClientSession(read, write) as session:
                await session.initialize()
                result = await session.call_tool("code_interpreter", {"code": "print(2 ** 10)"})
                assert result.structured_content["stdout"] == "1024\n", result
    assert decode(auth.context.current_tokens.access_token)[1]["sub"] == "carol"


def test_the_guides_mistral_program_signs_in_and_runs_code(server, tmp_path):
    """docs/oauth.md's program, as written, with a stand-in for the browser (BROWSER)."""
    import os
    import re
    import subprocess
    import sys
    from pathlib import Path

    url, _, _ = server
    here = Path(__file__).resolve().parent
    page = (here.parents[1] / "docs" / "oauth.md").read_text()
    program = re.search(r"<!-- tested: mistral-oauth -->\n```python\n(.*?)^```$", page, re.S | re.M).group(1)
    assert 'os.environ.get("TOOLHOST_URL", "https://toolhost.example.com")' in program
    script = tmp_path / "mistral_oauth.py"
    script.write_text(program)
    env = {k: v for k, v in os.environ.items() if not k.endswith("_API_KEY")}
    env.update(
        TOOLHOST_URL=url,
        CALLBACK_PORT=str(free_port()),
        BROWSER=f"{sys.executable} {here / 'oauth_browser.py'} %s",
        PYTHONPATH=str(here),
        OAUTH_USER="dana",
    )
    done = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"exit {done.returncode}\n{done.stdout}\n{done.stderr}"
    assert "signed in\n" in done.stdout and text_block("42\\n").search(done.stdout), done.stdout


def test_a_key_id_with_quotes_and_line_breaks_still_gets_a_well_formed_challenge(server):
    url, provider, _ = server
    token = mint(make_key("RS256"), provider.claims(scope=SCOPE), {"kid": 'x"\r\nSet-Cookie: a=b' + "k" * 500})
    response = post_mcp(url, token)
    assert_refused(response, 401, "does not publish")
    assert "set-cookie" not in response.headers and len(response.headers["www-authenticate"]) < 1000
