"""CRM_API_TOKENS: `principal[@org][/role]:token`, and the Caller each token stands for."""

from __future__ import annotations

import pytest

from gateway.config import Settings as GatewaySettings
from services.shared import auth
from services.shared.auth import Caller, Tokens
from services.shared.config import ConfigError, Settings

SECRET = "supersecret-0123456789abcdef"


def accepted(raw: str, **env: str) -> dict[str, Caller]:
    return Settings.from_env("leads", {"CRM_API_TOKENS": raw, **env}).tokens


@pytest.mark.parametrize(
    ("entry", "caller"),
    [
        ("alice", Caller("alice", "agent", "default")),
        ("alice@acme", Caller("alice", "agent", "acme")),
        ("dave@acme/viewer", Caller("dave", "viewer", "acme")),
        ("vera/viewer", Caller("vera", "viewer", "default")),
        ("ada@beta-2/admin", Caller("ada", "admin", "beta-2")),
        ("al@acme/agent", Caller("al", "agent", "acme")),
        ("Alice.Smith+crm@x_1", Caller("Alice.Smith+crm", "agent", "x_1")),
        ("leads", Caller("leads", "service", "default")),
        ("gateway@acme", Caller("gateway", "service", "acme")),
    ],
)
def test_an_entry_names_the_principal_its_org_and_its_role(entry: str, caller: Caller) -> None:
    assert accepted(f"{entry}:{SECRET}") == {SECRET: caller}


def test_the_token_is_everything_after_the_first_colon() -> None:
    assert accepted(f"alice@acme/viewer:{SECRET}:more") == {
        f"{SECRET}:more": Caller("alice", "viewer", "acme")}


def test_the_callers_of_several_tokens() -> None:
    tokens = Tokens(accepted(f"alice@acme:{SECRET}, dave@acme/viewer : dave-{SECRET},"
                             f"bob:bob-{SECRET},messaging:messaging-{SECRET}"))
    assert tokens.caller(f"Bearer {SECRET}") == Caller("alice", "agent", "acme")
    assert tokens.caller(f"bearer dave-{SECRET}") == Caller("dave", "viewer", "acme")
    assert tokens.caller(f"Bearer bob-{SECRET}") == Caller("bob", "agent", "default")
    assert tokens.caller(f"Bearer messaging-{SECRET}") == Caller("messaging", "service")
    assert tokens.principal(f"Bearer dave-{SECRET}") == "dave"
    with pytest.raises(auth.Unauthenticated) as refused:
        tokens.caller(f"Bearer eve-{SECRET}")
    assert refused.value.reason == "INVALID_TOKEN"
    with pytest.raises(auth.Unauthenticated) as refused:
        tokens.caller(None)
    assert refused.value.reason == "MISSING_CREDENTIALS"


def test_a_principal_may_have_several_tokens_naming_the_same_org_and_role() -> None:
    found = accepted(f"dave@acme/viewer:{SECRET},dave@acme/viewer:new-{SECRET}")
    assert set(found.values()) == {Caller("dave", "viewer", "acme")}
    assert len(found) == 2


def test_crm_service_principals_decides_who_is_a_service() -> None:
    found = accepted(f"robot:{SECRET},leads:leads-{SECRET}", CRM_SERVICE_PRINCIPALS="robot")
    assert found == {SECRET: Caller("robot", "service"),
                     f"leads-{SECRET}": Caller("leads", "agent")}


def test_the_gateway_reads_the_same_grammar() -> None:
    loaded = GatewaySettings.from_env({
        "CRM_API_TOKENS": f"dave@acme/viewer:{SECRET},gateway:gateway-{SECRET}"})
    assert loaded.tokens == {SECRET: Caller("dave", "viewer", "acme"),
                             f"gateway-{SECRET}": Caller("gateway", "service")}
    assert loaded.token_of("dave") == SECRET
    assert loaded.service_token == f"gateway-{SECRET}"


def test_a_caller_spells_itself_in_full() -> None:
    assert str(Caller("dave", "viewer", "acme")) == "dave@acme/viewer"
    assert Caller("gateway", "service").in_org("acme") == Caller("gateway", "service", "acme")


LONG_ORG = "a" * (auth.MAX_ORG_LENGTH + 1)


@pytest.mark.parametrize(
    ("raw", "says"),
    [
        (f"{SECRET}", "entry 1 is not `principal[@org][/role]:token`"),
        (f"alice:{SECRET},:x-{SECRET}", "entry 2 is not `principal[@org][/role]:token`"),
        (f"@acme:{SECRET}", "entry 1: the principal is empty"),
        (f"al ice:{SECRET}", "entry 1: a principal name is printable ASCII"),
        (f"{'p' * 129}:{SECRET}", "entry 1: a principal name is at most 128 characters"),
        (f"alice@:{SECRET}", "entry 1 ('alice'): the org is empty"),
        (f"alice@Acme:{SECRET}", "entry 1 ('alice'): an org name is lower-case letters"),
        (f"alice@ac.me:{SECRET}", "entry 1 ('alice'): an org name is lower-case letters"),
        (f"alice@-acme:{SECRET}", "entry 1 ('alice'): an org name is lower-case letters"),
        (f"alice@acme@beta:{SECRET}", "entry 1 ('alice'): an org name is lower-case letters"),
        (f"alice@{LONG_ORG}:{SECRET}", "entry 1 ('alice'): an org name is at most 63 characters"),
        (f"alice/:{SECRET}", "entry 1 ('alice'): the role is not one of agent, viewer, admin"),
        (f"alice/owner:{SECRET}", "entry 1 ('alice'): the role is not one of agent, viewer, admin"),
        (f"alice/Viewer:{SECRET}", "entry 1 ('alice'): the role is not one of agent, viewer"),
        (f"alice/viewer/admin:{SECRET}", "entry 1 ('alice'): the role is not one of"),
        (f"alice/service:{SECRET}",
         "entry 1 ('alice'): the role `service` is not given in CRM_API_TOKENS; name the "
         "principal in CRM_SERVICE_PRINCIPALS"),
        (f"leads/service:{SECRET}", "entry 1 ('leads'): the role `service` is not given"),
        (f"gateway/admin:{SECRET}",
         "entry 1 ('gateway') is a service (CRM_SERVICE_PRINCIPALS), whose role is `service`: "
         "name no role for it"),
        (f"alice@acme:{SECRET},alice@beta:b-{SECRET}",
         "entry 2 ('alice') names another org or role than entry 1 of 'alice'; every token of "
         "a principal names the same"),
        (f"alice:{SECRET},alice/viewer:b-{SECRET}", "entry 2 ('alice') names another org or role"),
        (f"alice:{SECRET},alice@default/agent:b-{SECRET},alice/admin:c-{SECRET}",
         "entry 3 ('alice') names another org or role than entry 1"),
        (f"alice@acme:{SECRET},bob@beta:{SECRET}",
         "entry 2 ('bob') has the same token as entry 1 ('alice'); every token must differ"),
        ("alice@acme/viewer:short-0123", "entry 1 ('alice'): the token is shorter than 16"),
        (f"alice:{SECRET}{'x' * 4096}", "entry 1 ('alice'): the token is longer than 4096"),
        (f"alice:{SECRET}\u00e9", "entry 1 ('alice'): the token has characters other than"),
        (f"alice:{SECRET} more", "entry 1 ('alice'): the token has characters other than"),
    ],
)
def test_a_bad_entry_is_refused_by_position_and_reason_never_by_its_token(
    raw: str, says: str,
) -> None:
    for read in (lambda: accepted(raw),
                 lambda: GatewaySettings.from_env({"CRM_API_TOKENS": raw})):
        with pytest.raises(ConfigError) as refused:
            read()
        message = str(refused.value)
        assert message.startswith(f"CRM_API_TOKENS: {says}"), message
        assert SECRET not in message and "short-0123" not in message


@pytest.mark.parametrize("raw", ["leads,", "leads,bo b", "leads,a@b", "leads,a/b", "leads,a:b"])
def test_crm_service_principals_are_principal_names(raw: str) -> None:
    with pytest.raises(ConfigError, match="CRM_SERVICE_PRINCIPALS: entry 2 is not a principal"):
        accepted(f"alice:{SECRET}", CRM_SERVICE_PRINCIPALS=raw)


@pytest.mark.parametrize("name", ["default", "acme", "a", "beta-2", "x_1", "0org", "o" * 63])
def test_org_names(name: str) -> None:
    assert auth.org_name(name) == name


@pytest.mark.parametrize("name", ["", "Acme", "ac me", "-acme", "_acme", "ac.me", "acme/x",
                                  "o" * 64, "acme'; drop", "\u00e4cme"])
def test_not_org_names(name: str) -> None:
    with pytest.raises(ValueError) as refused:
        auth.org_name(name)
    assert name not in str(refused.value) or not name
