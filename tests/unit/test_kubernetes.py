"""deploy/kubernetes renders, validates, and names only what the code has.

No cluster runs here, so the manifests are checked as the compose file is:
`kubectl kustomize` renders the base (a PostgreSQL of your own) and both
overlays; every object validates, strictly (no unknown field), against the
Kubernetes API schemas of KUBERNETES_VERSION and of the newest release
kubernetes-validate ships; and every command, port, variable, probe, timing,
Secret and policy is held against the code that reads it.

CloudNativePG's `Cluster` is a custom resource, with no schema here (its CRD
belongs to the operator): its metadata and resources are validated against
the Kubernetes definitions it embeds, the fields we set against CLUSTER_FIELDS
(types as the CloudNativePG API reference gives them), and the Secret the
services read against the name the operator gives it. The whole object is
checked by the operator's CRD at `kubectl apply --dry-run=server` on a cluster
where CloudNativePG is installed.
"""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
import subprocess
from importlib import resources
from typing import Any

import jsonschema
import pytest
import yaml
from kubernetes_validate import utils as kubernetes
from referencing import Registry, Resource

from services.shared.config import DEFAULT_PORTS
from services.shared.server import LIVENESS
from tests.support.servers import ROOT
from tests.unit.test_deployment import APPS, SOURCES, Recording

DEPLOY = ROOT / "deploy" / "kubernetes"
# The oldest Kubernetes these manifests are for (native sleep preStop: 1.30+).
KUBERNETES_VERSION = "1.31.0"
VERSIONS = [KUBERNETES_VERSION, kubernetes.latest_version()]
RENDERINGS = {"base": DEPLOY / "base", "dev": DEPLOY / "overlays" / "dev",
              "prod": DEPLOY / "overlays" / "prod"}
SERVICES = ("leads", "bookings", "messaging")
# Variables whose values are secrets: from Secrets only, never a ConfigMap.
SECRET_VARIABLES = {"CRM_API_TOKENS", "CRM_SESSION_SECRET", "CRM_SERVICE_TOKEN",
                    "CRM_DATABASE_URL", "LEADS_DATABASE_URL", "BOOKINGS_DATABASE_URL",
                    "MESSAGING_DATABASE_URL", "GATEWAY_DATABASE_URL", "CRM_JWT_HS256_SECRET",
                    "TWILIO_ACCOUNT_SID", "TWILIO_AUTH_TOKEN", "TWILIO_FROM_NUMBER"}
# What a Secret's key stands for, to run the code with a value of the right shape.
SECRET_VALUES = {
    "CRM_API_TOKENS": ",".join(f"{p}:{p}-token-0123456789abcdef" for p in ("you", *APPS)),
    "CRM_DATABASE_URL": "postgresql://crm:secret@db:5432/crm",
    "GATEWAY_DATABASE_URL": "postgresql://crm:secret@db:5432/crm",
    "CRM_SESSION_SECRET": "s" * 32,
    "TWILIO_ACCOUNT_SID": "AC" + "0" * 32,
    "TWILIO_AUTH_TOKEN": "twilio-auth-token",
    "TWILIO_FROM_NUMBER": "+15005550006",
}
# The fields of a CloudNativePG Cluster these manifests set, with their API types.
CLUSTER_FIELDS: dict[str, Any] = {
    "type": "object",
    "required": ["instances", "storage", "bootstrap"],
    "additionalProperties": False,
    "properties": {
        "instances": {"type": "integer", "minimum": 1},
        "imageName": {"type": "string", "pattern": r"^\S+:\S+$"},
        "primaryUpdateStrategy": {"enum": ["unsupervised", "supervised"]},
        "bootstrap": {
            "type": "object", "additionalProperties": False,
            "properties": {"initdb": {
                "type": "object", "additionalProperties": False, "required": ["database", "owner"],
                "properties": {"database": {"type": "string"}, "owner": {"type": "string"}}}},
        },
        "postgresql": {
            "type": "object", "additionalProperties": False,
            "properties": {"parameters": {"type": "object",
                                          "additionalProperties": {"type": "string"}}},
        },
        "storage": {
            "type": "object", "additionalProperties": False, "required": ["size"],
            "properties": {"size": {"type": "string", "pattern": r"^\d+(Mi|Gi|Ti)$"},
                           "storageClass": {"type": "string"}},
        },
        "resources": {"type": "object"},  # core/v1 ResourceRequirements: validated below
        "affinity": {
            "type": "object", "additionalProperties": False,
            "properties": {"enablePodAntiAffinity": {"type": "boolean"},
                           "topologyKey": {"type": "string"}},
        },
    },
}


@functools.cache
def rendered(name: str) -> tuple[dict[str, Any], ...]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        if os.environ.get("CI") == "true":
            pytest.fail("CI=true but kubectl (with its kustomize) is not installed")
        pytest.skip("kubectl is not installed: it renders the kustomizations")
    out = subprocess.run([kubectl, "kustomize", str(RENDERINGS[name])], check=True,
                         capture_output=True, text=True, timeout=120).stdout
    return tuple(doc for doc in yaml.safe_load_all(out) if doc)


def objects(name: str, kind: str) -> dict[str, dict[str, Any]]:
    return {o["metadata"]["name"]: o for o in rendered(name) if o["kind"] == kind}


def pod(name: str, server: str) -> dict[str, Any]:
    spec: dict[str, Any] = objects(name, "Deployment")[server]["spec"]["template"]
    return spec


def server(name: str, app: str) -> dict[str, Any]:
    (container,) = [c for c in pod(name, app)["spec"]["containers"] if c["name"] == "server"]
    return container


def env_of(name: str, container: dict[str, Any]) -> dict[str, Any]:
    """A container's environment as Kubernetes gives it: ConfigMaps, then `env`."""
    config = objects(name, "ConfigMap")
    found: dict[str, Any] = {}
    for source in container.get("envFrom", []):
        found.update(config[source["configMapRef"]["name"]]["data"])
    for entry in container.get("env", []):
        found[entry["name"]] = entry.get("value", entry.get("valueFrom"))
    return found


def grace_of(name: str, app: str) -> tuple[float, float]:
    """(CRM_SHUTDOWN_DRAIN_SECONDS, CRM_SHUTDOWN_GRACE_SECONDS) as the server gets them."""
    env = env_of(name, server(name, app))
    return float(env.get("CRM_SHUTDOWN_DRAIN_SECONDS", 0)), float(env["CRM_SHUTDOWN_GRACE_SECONDS"])


# -- rendering and the schemas ------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(RENDERINGS))
def test_every_kustomization_renders_the_four_servers(name: str) -> None:
    assert set(objects(name, "Deployment")) == set(APPS)
    assert set(objects(name, "Service")) >= set(APPS)
    assert set(objects(name, "PodDisruptionBudget")) == set(APPS)


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("name", sorted(RENDERINGS))
def test_every_object_validates_strictly_against_the_kubernetes_schemas(
    name: str, version: str
) -> None:
    checked = 0
    for manifest in rendered(name):
        if manifest["apiVersion"].startswith("postgresql.cnpg.io/"):
            continue  # a custom resource: see the CloudNativePG tests
        kubernetes.validate(manifest, version, strict=True)
        checked += 1
    assert checked >= 15


def definition(version: str, name: str) -> jsonschema.protocols.Validator:
    """A validator for one definition of the Kubernetes API (ObjectMeta, …)."""
    schemas = resources.files("kubernetes_validate") / "kubernetes-json-schema"
    definitions = json.loads((schemas / f"v{version}-local-strict" / "_definitions.json")
                             .read_text())
    registry: Registry[Any] = Resource.from_contents(definitions) @ Registry()
    schema = {"$schema": "https://json-schema.org/draft/2020-12/schema",
              "$id": "https://kubernetes.io/api/closed-loop",
              "$ref": f"/api/_definitions.json#/$defs/{name}"}
    return jsonschema.Draft202012Validator(schema, registry=registry)


def test_the_cloudnative_pg_cluster_is_what_the_services_connect_to() -> None:
    (cluster,) = [o for o in rendered("prod") if o["kind"] == "Cluster"]
    assert cluster["apiVersion"] == "postgresql.cnpg.io/v1"
    definition(KUBERNETES_VERSION, "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta").validate(
        cluster["metadata"])
    definition(KUBERNETES_VERSION, "io.k8s.api.core.v1.ResourceRequirements").validate(
        cluster["spec"]["resources"])
    jsonschema.Draft202012Validator(CLUSTER_FIELDS).validate(cluster["spec"])
    # The operator writes the application user's URI to `<cluster>-app`, key `uri`.
    app_secret = {"name": f"{cluster['metadata']['name']}-app", "key": "uri"}
    for app in SERVICES:
        for container in (server("prod", app), *pod("prod", app)["spec"]["initContainers"]):
            url = env_of("prod", container)["CRM_DATABASE_URL"]
            assert url == {"secretKeyRef": app_secret}, (app, container["name"])
    assert cluster["spec"]["instances"] >= 3


def test_a_bad_cluster_field_is_caught() -> None:
    (cluster,) = [o for o in rendered("prod") if o["kind"] == "Cluster"]
    for broken in ({**cluster["spec"], "instances": "three"},
                   {**cluster["spec"], "storage": {"size": "twenty"}},
                   {**cluster["spec"], "replicas": 3}):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.Draft202012Validator(CLUSTER_FIELDS).validate(broken)


# -- the manifests against the code ------------------------------------------------------


@pytest.mark.parametrize("name", sorted(RENDERINGS))
@pytest.mark.parametrize("app", sorted(APPS))
def test_each_server_runs_its_module_on_its_default_port_behind_its_service(
    name: str, app: str
) -> None:
    container = server(name, app)
    port = DEFAULT_PORTS[app]
    assert container["command"] == ["python", "-m", APPS[app], "--port", str(port)]
    assert (ROOT / APPS[app].replace(".", "/") / "__main__.py").is_file()
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports[next(iter(ports))] == port
    service = objects(name, "Service")[app]
    labels = pod(name, app)["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    (exposed,) = service["spec"]["ports"]
    assert exposed["port"] == port and ports[exposed["targetPort"]] == port
    if app != "gateway":
        # Headless: DNS answers with every ready pod, for dns:/// client balancing.
        assert service["spec"]["clusterIP"] == "None"


@pytest.mark.parametrize("name", sorted(RENDERINGS))
@pytest.mark.parametrize("app", SERVICES)
def test_services_probe_their_grpc_health_and_migrate_before_serving(name: str, app: str) -> None:
    container = server(name, app)
    port = DEFAULT_PORTS[app]
    # Ready only while the database answers; alive while the process answers.
    assert container["readinessProbe"]["grpc"] == {"port": port}
    assert container["livenessProbe"]["grpc"] == {"port": port, "service": LIVENESS}
    assert container["startupProbe"]["grpc"] == {"port": port, "service": LIVENESS}
    (migrate,) = pod(name, app)["spec"]["initContainers"]
    assert migrate["command"] == ["python", "-m", APPS[app], "migrate"]
    assert migrate["image"] == container["image"]
    assert '"migrate"' in (ROOT / "services/shared/server.py").read_text()


@pytest.mark.parametrize("name", sorted(RENDERINGS))
def test_the_gateway_is_probed_on_its_health_route(name: str) -> None:
    container = server(name, "gateway")
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert '"/healthz"' in SOURCES


@pytest.mark.parametrize("name", sorted(RENDERINGS))
@pytest.mark.parametrize("app", sorted(APPS))
def test_every_variable_given_to_a_server_is_read_by_its_code_and_parses(
    name: str, app: str
) -> None:
    from gateway.config import Settings as GatewaySettings
    from services.messaging.settings import SmsSettings
    from services.shared.config import Settings

    given = env_of(name, server(name, app))
    values = {key: SECRET_VALUES[key] if isinstance(value, dict) else str(value)
              for key, value in given.items()}
    environ = Recording(values)
    if app == "gateway":
        GatewaySettings.from_env(environ)
    else:
        Settings.from_env(app, environ)
        if app == "messaging":
            SmsSettings.from_env(environ)
    assert set(environ) <= environ.read, set(environ) - environ.read


@pytest.mark.parametrize("name", sorted(RENDERINGS))
def test_services_reach_every_replica_of_each_other_through_headless_services(name: str) -> None:
    services = objects(name, "Service")
    for app in ("gateway", *SERVICES):
        env = env_of(name, server(name, app))
        for target in SERVICES:
            assert env[f"CRM_{target.upper()}_TARGET"] == f"dns:///{target}:{DEFAULT_PORTS[target]}"
            assert services[target]["spec"]["clusterIP"] == "None"


@pytest.mark.parametrize("name", sorted(RENDERINGS))
@pytest.mark.parametrize("app", sorted(APPS))
def test_termination_leaves_time_for_the_pause_the_drain_and_the_calls_in_flight(
    name: str, app: str
) -> None:
    spec = pod(name, app)["spec"]
    pause = server(name, app)["lifecycle"]["preStop"]["sleep"]["seconds"]
    drain, grace = grace_of(name, app)
    if app == "gateway":
        assert drain == 0  # the gateway has no drain of its own: the pause is its drain
    else:
        assert drain > 0
    needed = pause + drain + grace
    assert needed <= spec["terminationGracePeriodSeconds"] <= needed + 10


# -- secrets, security, resources ----------------------------------------------------------


@pytest.mark.parametrize("name", sorted(RENDERINGS))
def test_secrets_come_from_secrets_never_from_config_maps(name: str) -> None:
    for config in objects(name, "ConfigMap").values():
        assert not set(config["data"]) & SECRET_VARIABLES
        for value in config["data"].values():
            assert not re.search(r"://[^/\s]*@", value), "credentials in a URL"
    for app in APPS:
        pod_spec = pod(name, app)["spec"]
        for container in (*pod_spec["containers"], *pod_spec.get("initContainers", [])):
            for entry in container.get("env", []):
                if entry["name"] in SECRET_VARIABLES:
                    assert set(entry) == {"name", "valueFrom"}, entry
                    assert set(entry["valueFrom"]) == {"secretKeyRef"}, entry


@pytest.mark.parametrize("name", sorted(RENDERINGS))
def test_every_gateway_replica_keeps_logged_out_sessions_in_the_services_database(
    name: str,
) -> None:
    """One store for every replica: a cookie logged out through one is refused by all."""
    services = {env_of(name, server(name, app))["CRM_DATABASE_URL"]["secretKeyRef"]["name"]
                for app in SERVICES}
    store = env_of(name, server(name, "gateway"))["GATEWAY_DATABASE_URL"]
    assert {store["secretKeyRef"]["name"]} == services


def test_the_dev_database_binds_the_servers_by_row_level_security() -> None:
    """Superusers ignore row-level security: the dev overlay's servers connect as the
    ordinary role its init script makes, not as the image's superuser."""
    import base64
    from urllib.parse import urlsplit

    secrets = {o["metadata"]["name"].rsplit("-", 1)[0]: o["data"]
               for o in rendered("dev") if o["kind"] == "Secret"}
    user = urlsplit(base64.b64decode(secrets["closed-loop-database"]["url"]).decode()).username
    (database,) = objects("dev", "StatefulSet").values()
    (container,) = database["spec"]["template"]["spec"]["containers"]
    superuser = {e["name"]: e.get("value") for e in container["env"]}["POSTGRES_USER"]
    (init,) = [o for o in rendered("dev") if o["kind"] == "ConfigMap"
               and o["metadata"]["name"].startswith("closed-loop-postgres-init")]
    (script,) = init["data"].values()
    assert user != superuser
    assert re.search(rf"CREATE ROLE {user} LOGIN NOSUPERUSER NOBYPASSRLS\b", script)
    assert re.search(rf"CREATE DATABASE \w+ OWNER {user};", script)
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert "/docker-entrypoint-initdb.d" in mounts


@pytest.mark.parametrize("name", sorted(RENDERINGS))
def test_every_pod_runs_as_the_images_user_with_a_read_only_root(name: str) -> None:
    uid = int(re.search(r"--uid (\d+)", (ROOT / "Dockerfile").read_text())[1])  # type: ignore[index]
    workloads = [*objects(name, "Deployment").values(), *objects(name, "StatefulSet").values()]
    assert workloads
    for workload in workloads:
        spec = workload["spec"]["template"]["spec"]
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert spec["automountServiceAccountToken"] is False
        if workload["metadata"]["name"] in APPS:
            assert spec["securityContext"]["runAsUser"] == uid
        for container in (*spec["containers"], *spec.get("initContainers", [])):
            context = container["securityContext"]
            assert context["readOnlyRootFilesystem"] is True
            assert context["allowPrivilegeEscalation"] is False
            assert context["capabilities"]["drop"] == ["ALL"]
            mounts = {m["mountPath"] for m in container.get("volumeMounts", [])}
            assert "/tmp" in mounts  # the one place anything may write
            assert {"requests", "limits"} <= set(container["resources"])


@pytest.mark.parametrize("name", sorted(RENDERINGS))
@pytest.mark.parametrize("app", sorted(APPS))
def test_prometheus_scrapes_the_metrics_port_the_service_serves(name: str, app: str) -> None:
    """Every server, the gateway too, serves metrics on CRM_METRICS_PORT only."""
    template = pod(name, app)
    container = server(name, app)
    annotations = template["metadata"]["annotations"]
    port = int(env_of(name, container)["CRM_METRICS_PORT"])
    assert annotations["prometheus.io/scrape"] == "true"
    assert int(annotations["prometheus.io/port"]) == port
    assert {"name": "metrics", "containerPort": port} in container["ports"]


@pytest.mark.parametrize("name", sorted(RENDERINGS))
def test_every_budget_and_autoscaler_points_at_a_server(name: str) -> None:
    deployments = objects(name, "Deployment")
    for budget in objects(name, "PodDisruptionBudget").values():
        selector = budget["spec"]["selector"]["matchLabels"]
        matched = [d for d in deployments.values()
                   if selector.items() <= d["spec"]["template"]["metadata"]["labels"].items()]
        assert len(matched) == 1, budget["metadata"]["name"]
    scalers = objects(name, "HorizontalPodAutoscaler")
    if name == "prod":
        assert set(scalers) == set(APPS)
        for scaler in scalers.values():
            assert scaler["spec"]["scaleTargetRef"]["name"] in deployments
            assert scaler["spec"]["minReplicas"] >= 2
    else:
        assert scalers == {}
        assert all(d["spec"]["replicas"] == 1 for d in deployments.values())


# -- network policies ----------------------------------------------------------------------------


def _selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """Whether a label selector (matchLabels, `In` expressions) selects these labels."""
    if not selector.get("matchLabels", {}).items() <= labels.items():
        return False
    for expression in selector.get("matchExpressions", []):
        assert expression["operator"] == "In", "only In is used (and understood here)"
        if labels.get(expression["key"]) not in expression["values"]:
            return False
    return True


def _admits(peer: dict[str, Any], source: dict[str, str] | None) -> bool:
    """Whether a `from` peer admits a pod of our namespace (None: outside the cluster)."""
    if source is None or "ipBlock" in peer:
        return "ipBlock" in peer
    if peer.get("namespaceSelector", {}) != {}:
        return False  # another namespace, such as the operator's
    return _selects(peer.get("podSelector", {}), source)


def allowed(name: str, source: dict[str, str] | None, target: dict[str, str], port: int) -> bool:
    """Whether the rendered policies let `source` (a pod's labels, in the same
    namespace; None: outside the cluster) connect to a pod labelled `target` on `port`."""
    policies = [p["spec"] for p in objects(name, "NetworkPolicy").values()
                if _selects(p["spec"]["podSelector"], target)]
    assert any(p["podSelector"] == {} for p in policies), "every pod is isolated by default"
    for policy in policies:
        for rule in policy.get("ingress", []):
            if rule.get("ports") and port not in {p["port"] for p in rule["ports"]}:
                continue
            if "from" not in rule or any(_admits(peer, source) for peer in rule["from"]):
                return True
    return False


def labels(app: str) -> dict[str, str]:
    return {"app.kubernetes.io/name": "closed-loop", "app.kubernetes.io/component": app,
            "app.kubernetes.io/part-of": "closed-loop"}


@pytest.mark.parametrize("name", sorted(RENDERINGS))
def test_only_the_gateway_takes_traffic_from_outside(name: str) -> None:
    assert allowed(name, None, labels("gateway"), 8080)
    assert allowed(name, {"app": "some-other-pod"}, labels("gateway"), 8080)
    for app in SERVICES:
        assert not allowed(name, None, labels(app), DEFAULT_PORTS[app])
        assert not allowed(name, {"app": "some-other-pod"}, labels(app), DEFAULT_PORTS[app])


@pytest.mark.parametrize("name", sorted(RENDERINGS))
def test_metrics_are_for_prometheus_only_on_every_server(name: str) -> None:
    prometheus = {"app.kubernetes.io/name": "prometheus"}
    for app in ("gateway", *SERVICES):
        assert allowed(name, prometheus, labels(app), 9100), app
        assert not allowed(name, None, labels(app), 9100), app
        assert not allowed(name, {"app": "some-other-pod"}, labels(app), 9100), app


@pytest.mark.parametrize("name", sorted(RENDERINGS))
def test_services_take_calls_from_each_other_and_the_gateway_only(name: str) -> None:
    for app in SERVICES:
        for caller in ("gateway", *SERVICES):
            assert allowed(name, labels(caller), labels(app), DEFAULT_PORTS[app])
        assert not allowed(name, labels("gateway"), labels(app), 5432)


@pytest.mark.parametrize(("name", "database"), [
    ("dev", {"app.kubernetes.io/name": "postgres", "app.kubernetes.io/component": "database"}),
    ("prod", {"cnpg.io/cluster": "closed-loop-db"}),
])
def test_postgresql_takes_connections_from_the_services_and_the_gateway_only(
    name: str, database: dict[str, str]
) -> None:
    """The gateway keeps logged-out sessions there (gateway.ended_sessions), so that a
    cookie logged out through one replica is refused by every other."""
    for app in (*SERVICES, "gateway"):
        assert allowed(name, labels(app), database, 5432), app
    assert not allowed(name, None, database, 5432)
    assert not allowed(name, {"app": "some-other-pod"}, database, 5432)
