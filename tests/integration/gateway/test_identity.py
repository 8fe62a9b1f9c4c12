"""Who a browser is: signing in with a static token or a JWT, its org and role,
sessions that end for good, and services kept out of the console."""

from __future__ import annotations

import datetime
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from gateway.app import RunningGateway
from services.leads.bootstrap import SPEC as LEADS
from services.shared.server import RunningService
from tests.integration.gateway.conftest import Client, StartGateway
from tests.integration.gateway.support import Answer, new_key, request
from tests.support.idp import IdentityProvider
from tests.support.servers import TOKENS, TOKENS_ENV, start_in_process

LEAD = {"name": "Ada Lovelace", "phone": "+14155550123"}
SECRET = "a-session-secret-of-at-least-32-characters"


def browser(client: Client, gateway: RunningGateway, **options: object) -> aiohttp.ClientSession:
    return client(gateway, who=None, cookie_jar=aiohttp.CookieJar(unsafe=True), **options)


async def login(page: aiohttp.ClientSession, token: str) -> Answer:
    answer = await request(page, "POST", "/auth/login", json_body={"token": token})
    assert answer.status == 200, answer.body
    return answer


def cookie_of(page: aiohttp.ClientSession) -> str:
    return next(c for c in page.cookie_jar if c.key == "crm_session").value


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Where the gateways of a test keep ended sessions: one store they share."""
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'shared-gateway.db'}"
    return str(request.getfixturevalue("postgres_url"))


@pytest.fixture
async def replicas(start_gateway: StartGateway, leads_server: RunningService, store_url: str,
                   ) -> list[RunningGateway]:
    """Two gateways in front of one leads service, sharing their session store and secret."""
    env = {"CRM_LEADS_TARGET": leads_server.target, "CRM_PUBLIC_URL": "http://127.0.0.1:8080",
           "GATEWAY_DATABASE_URL": store_url, "CRM_SESSION_SECRET": SECRET}
    return [await start_gateway(**env), await start_gateway(**env)]


@pytest.mark.parametrize("who", ["alice", "carol@acme", "dave@acme/viewer", "ada/admin"])
async def test_signing_in_says_who_you_are_in_which_org_and_with_which_role(
    replicas: list[RunningGateway], client: Client, who: str,
) -> None:
    page = browser(client, replicas[0])
    answer = await login(page, TOKENS[who])
    principal, _, rest = who.partition("@")
    org, _, role = rest.partition("/") if "@" in who else ("default", "", who.partition("/")[2])
    principal = principal.split("/")[0]
    assert (answer.body["principal"], answer.body["org"], answer.body["role"]) == (
        principal, org or "default", role or "agent")
    again = await request(page, "GET", "/auth/session")
    assert again.body == answer.body


async def test_logging_out_ends_the_session_for_good_on_every_replica(
    replicas: list[RunningGateway], client: Client, start_gateway: StartGateway,
    leads_server: RunningService, store_url: str,
) -> None:
    first, second = replicas
    page = browser(client, first)
    csrf = (await login(page, TOKENS["alice"])).body["csrfToken"]
    stolen = cookie_of(page)
    thief = client(second, who=None, cookies={"crm_session": stolen})
    assert (await request(thief, "GET", "/v1/leads")).status == 200  # a replica honours it
    out = await request(page, "POST", "/auth/logout", headers={"X-CSRF-Token": csrf})
    assert out.status == 204
    restarted = await start_gateway(CRM_LEADS_TARGET=leads_server.target,
                                    CRM_PUBLIC_URL="http://127.0.0.1:8080",
                                    GATEWAY_DATABASE_URL=store_url, CRM_SESSION_SECRET=SECRET)
    for gateway in (first, second, restarted):
        replay = client(gateway, who=None, cookies={"crm_session": stolen})
        for method, path, headers in (("GET", "/v1/leads", {}), ("GET", "/auth/session", {}),
                                      ("GET", "/v1/events?types=lead.created", {}),
                                      ("POST", "/v1/leads", {"X-CSRF-Token": csrf})):
            refused = await request(replay, method, path, json_body=LEAD if method == "POST"
                                    else None, key=new_key(), headers=headers)
            assert (refused.status, refused.reason) == (401, "SESSION_ENDED"), (path, refused)
    # Signing in again is a new session.
    assert (await login(browser(client, second), TOKENS["alice"])).status == 200


@pytest.mark.parametrize("secret", [SECRET, None])
@pytest.mark.parametrize("change", ["rotated", "removed"])
async def test_rotating_or_removing_a_token_ends_its_sessions_whatever_the_session_secret(
    start_gateway: StartGateway, leads_server: RunningService, client: Client,
    secret: str | None, change: str,
) -> None:
    env = {"CRM_LEADS_TARGET": leads_server.target, "CRM_PUBLIC_URL": "http://127.0.0.1:8080"}
    if secret:
        env["CRM_SESSION_SECRET"] = secret
    before = await start_gateway(**env)
    page = browser(client, before)
    await login(page, TOKENS["alice"])
    await login(browser(client, before), TOKENS["bob"])
    kept = cookie_of(page)
    entries = [e for e in TOKENS_ENV.split(",") if not e.startswith("alice:")]
    if change == "rotated":
        entries.append("alice:alice-rotated-token-0123456789abcdef")
    after = await start_gateway(**env, CRM_API_TOKENS=",".join(entries))
    replay = client(after, who=None, cookies={"crm_session": kept})
    refused = await request(replay, "GET", "/v1/leads")
    assert refused.status == 401
    assert refused.reason == ("SESSION_REVOKED" if secret else "SESSION_INVALID")


@pytest.mark.parametrize("who", ["gateway", "leads", "messaging", "bookings"])
async def test_a_service_principal_cannot_sign_in(
    replicas: list[RunningGateway], client: Client, who: str,
) -> None:
    page = browser(client, replicas[0])
    refused = await request(page, "POST", "/auth/login", json_body={"token": TOKENS[who]})
    assert (refused.status, refused.reason) == (403, "ROLE_FORBIDS")
    assert "services cannot sign in" in refused.body["message"]
    assert "Set-Cookie" not in refused.headers


async def test_a_viewer_reads_but_every_button_is_403(
    replicas: list[RunningGateway], client: Client,
) -> None:
    agent = browser(client, replicas[0])
    csrf = (await login(agent, TOKENS["alice"])).body["csrfToken"]
    lead = await request(agent, "POST", "/v1/leads", json_body=LEAD, key=new_key(),
                         headers={"X-CSRF-Token": csrf})
    viewer = browser(client, replicas[0])
    csrf = (await login(viewer, TOKENS["vera/viewer"])).body["csrfToken"]
    assert (await request(viewer, "GET", f"/v1/leads/{lead.body['leadId']}")).status == 200
    for path, body in (("/v1/leads", LEAD),
                       (f"/v1/leads/{lead.body['leadId']}:updateStatus",
                        {"status": "LEAD_STATUS_CONTACTED"})):
        refused = await request(viewer, "POST", path, json_body=body, key=new_key(),
                                headers={"X-CSRF-Token": csrf})
        assert (refused.status, refused.reason) == (403, "ROLE_FORBIDS"), refused.body
        assert refused.body["details"][0]["metadata"] == {"role": "viewer",
                                                          "required_role": "agent"}


# -- JWT ------------------------------------------------------------------------------

@pytest.fixture
def idp(tmp_path: Path) -> IdentityProvider:
    return IdentityProvider(tmp_path)


@pytest.fixture
async def jwt_gateway(start_gateway: StartGateway, service_env: dict[str, str],
                      idp: IdentityProvider) -> AsyncIterator[RunningGateway]:
    leads = await start_in_process(LEADS, {**service_env, **idp.env()})
    yield await start_gateway(CRM_LEADS_TARGET=leads.target,
                              CRM_PUBLIC_URL="http://127.0.0.1:8080", **idp.env())
    await leads.stop(grace=1, drain=0)


async def test_signing_in_with_a_jwt(
    jwt_gateway: RunningGateway, client: Client, idp: IdentityProvider,
) -> None:
    token = idp.sign(sub="erin", org="acme", roles=["agent"], ttl=600)
    page = browser(client, jwt_gateway)
    answer = await login(page, token)
    assert (answer.body["principal"], answer.body["org"], answer.body["role"]) == (
        "erin", "acme", "agent")
    assert token not in cookie_of(page) and token.split(".")[1] not in cookie_of(page)
    created = await request(page, "POST", "/v1/leads", json_body=LEAD, key=new_key(),
                            headers={"X-CSRF-Token": answer.body["csrfToken"]})
    assert (created.status, created.body["createdBy"]) == (200, "erin")
    api = client(jwt_gateway, who=None)
    read = await request(api, "GET", f"/v1/leads/{created.body['leadId']}",
                         headers={"Authorization": f"Bearer {token}"})
    assert read.status == 200


async def test_a_jwt_session_ends_when_the_jwt_expires(
    jwt_gateway: RunningGateway, client: Client, idp: IdentityProvider,
) -> None:
    token = idp.sign(ttl=120)
    answer = await login(browser(client, jwt_gateway), token)
    expires = datetime.datetime.fromisoformat(answer.body["expiresAt"].replace("Z", "+00:00"))
    assert expires.timestamp() <= idp.claims(ttl=120)["exp"]


@pytest.mark.parametrize(("fields", "says"), [
    ({"ttl": -600}, "the JWT has expired"),
    ({"roles": ["service"]}, "the JWT's roles name `service`"),
    ({"sub": "gateway"}, "the JWT's sub is a service principal"),
    ({"org": None}, "the JWT has no `org` claim"),
])
async def test_a_bad_jwt_does_not_sign_in(
    jwt_gateway: RunningGateway, client: Client, idp: IdentityProvider,
    fields: dict[str, object], says: str,
) -> None:
    refused = await request(browser(client, jwt_gateway), "POST", "/auth/login",
                            json_body={"token": idp.sign(**fields)})
    assert (refused.status, refused.reason) == (401, "INVALID_TOKEN")
    assert refused.body["message"].startswith(says)
    assert "Set-Cookie" not in refused.headers


async def test_failed_authentications_are_limited_per_principal_across_addresses(
    start_gateway: StartGateway, service_env: dict[str, str], client: Client,
    idp: IdentityProvider,
) -> None:
    """Guesses at one principal from many addresses: each address stays under the
    limit, the principal's JWTs do not; other principals are untouched."""
    leads = await start_in_process(LEADS, {**service_env, **idp.env()})
    gateway = await start_gateway(CRM_LEADS_TARGET=leads.target, CRM_AUTH_FAILURES_MAX="3",
                                  CRM_AUTH_FAILURES_WINDOW_SECONDS="3600", **idp.env())
    try:
        def from_address(n: int) -> aiohttp.ClientSession:
            return client(gateway, who=None,
                          connector=aiohttp.TCPConnector(local_addr=(f"127.0.0.{n}", 0)))

        forged = [idp.sign(sub="erin", alg="HS256", key="a-guessed-secret-" + "x" * 32),
                  idp.sign(sub="erin", ttl=-3600),
                  idp.sign(sub="erin", alg="HS256", key="another-guess-" + "y" * 32)]
        tried = [await request(from_address(2 + n), "POST", "/auth/login",
                               json_body={"token": token}) if n % 2 else
                 await request(from_address(2 + n), "GET", "/v1/leads",
                               headers={"Authorization": f"Bearer {token}"})
                 for n, token in enumerate(forged)]
        assert [t.status for t in tried] == [401, 401, 401]
        good = idp.sign(sub="erin", ttl=600)
        refused = await request(from_address(9), "POST", "/auth/login",
                                json_body={"token": good})
        assert (refused.status, refused.reason) == (429, "TOO_MANY_FAILED_AUTHENTICATIONS")
        assert 3500 < int(refused.headers["Retry-After"]) <= 3600
        bearer = await request(from_address(10), "GET", "/v1/leads",
                               headers={"Authorization": f"Bearer {good}"})
        assert bearer.status == 429
        # Another principal, and static tokens (which claim nobody), go on.
        assert (await request(from_address(11), "POST", "/auth/login",
                              json_body={"token": idp.sign(sub="frank", ttl=600)})).status == 200
        assert (await request(from_address(12), "GET", "/v1/leads", headers={
            "Authorization": f"Bearer {TOKENS['alice']}"})).status == 200
    finally:
        await leads.stop(grace=1, drain=0)
