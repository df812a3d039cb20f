"""Deployment files, checked by parsing (no Docker or cluster here).

docker-compose.yml, the Dockerfile and deploy/k8s/ must agree with the code
(settings, topics, metrics port) and with each other (volumes, selectors,
probes, the Prometheus scrape config), and follow the house rules: pinned
images, non-root, health checks everywhere, no TensorFlow in the worker image.
"""

from __future__ import annotations

import os
import re
import shlex
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from stream.settings import ENV_PREFIX, Settings
from stream.topics import topic_specs

REPO = Path(__file__).resolve().parents[2]
COMPOSE = REPO / "docker-compose.yml"
DOCKERFILE = REPO / "Dockerfile"
K8S = REPO / "deploy" / "k8s"
PROMETHEUS = REPO / "deploy" / "prometheus" / "prometheus.yml"
GRAFANA_DASHBOARDS = REPO / "deploy" / "grafana" / "provisioning" / "dashboards" / "segmenter.yml"
MODELS_TOPIC = "segmenter-models"
SETTINGS_VARS = {f"{ENV_PREFIX}{name.upper()}" for name in Settings.model_fields}


# --------------------------------------------------------------------- loaders


def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return data


def services() -> dict[str, dict[str, Any]]:
    return compose()["services"]


def k8s_docs() -> list[tuple[str, dict[str, Any]]]:
    docs = []
    for path in sorted(K8S.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc is not None:
                docs.append((path.name, doc))
    return docs


def k8s(kind: str, name: str | None = None) -> list[dict[str, Any]]:
    return [
        d
        for _, d in k8s_docs()
        if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)
    ]


def one(kind: str, name: str) -> dict[str, Any]:
    found = k8s(kind, name)
    assert len(found) == 1, f"expected one {kind} {name!r}, found {len(found)}"
    return found[0]


def env_of(service: dict[str, Any]) -> dict[str, str]:
    """A compose service's environment, list or mapping form, values as strings."""
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: "" if v is None else str(v) for k, v in env.items()}


def containers() -> Iterator[tuple[str, dict[str, Any]]]:
    for dep in k8s("Deployment"):
        spec = dep["spec"]["template"]["spec"]
        for c in spec.get("initContainers", []) + spec["containers"]:
            yield dep["metadata"]["name"], c


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        full = (pending + line).strip()
        pending = ""
        word, _, rest = full.partition(" ")
        out.append((word.upper(), rest.strip()))
    return out


def dockerfile_stages() -> dict[str, dict[str, Any]]:
    """Stage name -> {"from": base, "lines": [(INSTR, args)]}; ARG defaults substituted."""
    args: dict[str, str] = {}
    stages: dict[str, dict[str, Any]] = {}
    current: dict[str, Any] | None = None
    for instr, rest in dockerfile_instructions():
        if instr == "ARG" and current is None:
            name, _, default = rest.partition("=")
            args[name] = default
            continue
        if instr == "FROM":
            parts = rest.split()
            base = re.sub(r"\$\{?(\w+)\}?", lambda m: args.get(m.group(1), m.group(0)), parts[0])
            name = parts[2] if len(parts) == 3 and parts[1].upper() == "AS" else base
            current = {"from": base, "lines": []}
            stages[name] = current
            continue
        assert current is not None, f"{instr} before the first FROM"
        current["lines"].append((instr, rest))
    return stages


def stage_chain(stages: dict[str, dict[str, Any]], name: str) -> list[dict[str, Any]]:
    """A stage and its ancestors inside this Dockerfile, root first."""
    chain = [stages[name]]
    while chain[0]["from"] in stages:
        chain.insert(0, stages[chain[0]["from"]])
    return chain


def effective(stages: dict[str, dict[str, Any]], name: str, instr: str) -> str | None:
    value = None
    for stage in stage_chain(stages, name):
        for i, rest in stage["lines"]:
            if i == instr:
                value = rest
    return value


def kafka_init_commands() -> list[list[str]]:
    svc = services()["kafka-init"]
    command = svc["command"]
    script = command if isinstance(command, str) else "\n".join(command)
    return [shlex.split(line) for line in script.splitlines() if line.strip()]


def created_topics() -> dict[str, list[str]]:
    """Topic -> the kafka-topics.sh --create argv that creates it."""
    out = {}
    for argv in kafka_init_commands():
        if "--create" in argv:
            out[argv[argv.index("--topic") + 1]] = argv
    return out


def flag(argv: list[str], name: str) -> list[str]:
    return [argv[i + 1] for i, a in enumerate(argv) if a == name]


def image_is_pinned(image: str) -> bool:
    name, _, digest = image.partition("@")
    if digest:
        return digest.startswith("sha256:")
    last = name.rsplit("/", 1)[-1]
    if ":" not in last:
        return False
    tag = last.split(":", 1)[1]
    return tag != "latest" and bool(re.search(r"\d", tag))


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No SEGMENTER_* from the developer's shell leaks into Settings()."""
    for key in list(os.environ):
        if key.startswith(ENV_PREFIX):
            monkeypatch.delenv(key)
    return monkeypatch


# ------------------------------------------------------------------- parsing


def test_compose_and_every_k8s_document_parse() -> None:
    assert set(services()) >= {
        "kafka",
        "kafka-init",
        "redis",
        "worker",
        "retrain",
        "prometheus",
        "grafana",
    }
    expected = {
        "namespace.yaml",
        "configmap.yaml",
        "secret.example.yaml",
        "worker-deployment.yaml",
        "worker-pdb.yaml",
        "worker-service.yaml",
        "servicemonitor.yaml",
        "retrain-deployment.yaml",
        "models-pvc.yaml",
    }
    assert expected <= {p.name for p in K8S.glob("*.yaml")}
    docs = k8s_docs()
    assert {name for name, _ in docs} >= expected
    for name, doc in docs:
        assert {"apiVersion", "kind", "metadata"} <= set(doc), name
        assert doc["metadata"].get("name"), name
        if doc["kind"] != "Namespace":
            assert doc["metadata"].get("namespace") == "segmenter", name


# ------------------------------------------------------------------ settings


def k8s_settings_vars() -> dict[str, dict[str, str]]:
    """Where a SEGMENTER_* variable is set in k8s -> its values."""
    found: dict[str, dict[str, str]] = {}
    for cm in k8s("ConfigMap"):
        found[f"ConfigMap/{cm['metadata']['name']}"] = dict(cm["data"])
    for secret in k8s("Secret"):
        data = {**secret.get("stringData", {}), **secret.get("data", {})}
        found[f"Secret/{secret['metadata']['name']}"] = data
    for dep_name, c in containers():
        found[f"Deployment/{dep_name}/{c['name']}"] = {
            e["name"]: str(e.get("value", "")) for e in c.get("env", [])
        }
    return found


def test_every_segmenter_variable_set_anywhere_is_a_setting() -> None:
    sources: dict[str, set[str]] = {}
    for name, svc in services().items():
        sources[f"compose/{name}"] = set(env_of(svc))
    for where, data in k8s_settings_vars().items():
        sources[f"k8s/{where}"] = set(data)
    sources["Dockerfile"] = {
        m
        for instr, rest in dockerfile_instructions()
        if instr == "ENV"
        for m in re.findall(rf"\b({ENV_PREFIX}\w+)=", rest)
    }
    checked = 0
    for where, names in sources.items():
        ours = {n for n in names if n.startswith(ENV_PREFIX)}
        unknown = ours - SETTINGS_VARS
        assert not unknown, f"{where} sets {sorted(unknown)}, which Settings does not define"
        checked += len(ours)
    assert checked > 20


@pytest.mark.parametrize("service", ["worker", "retrain"])
def test_compose_settings_are_valid(service: str, clean_env: pytest.MonkeyPatch) -> None:
    env = env_of(services()[service])
    for key, value in env.items():
        clean_env.setenv(key, value)
    settings = Settings()
    assert settings.bootstrap_servers == "kafka:9092"
    assert settings.metrics_host == "0.0.0.0"
    assert str(settings.model_dir) == "/var/lib/segmenter/models"


def test_k8s_settings_are_valid(clean_env: pytest.MonkeyPatch) -> None:
    for data in k8s_settings_vars().values():
        for key, value in data.items():
            if key.startswith(ENV_PREFIX):
                clean_env.setenv(key, value)
    settings = Settings()
    assert settings.metrics_host == "0.0.0.0"
    assert settings.redis_password is not None


def test_configmap_values_are_strings() -> None:
    for cm in k8s("ConfigMap"):
        for key, value in cm["data"].items():
            assert isinstance(value, str), f"ConfigMap {key}: {value!r} must be quoted"


def test_worker_and_retrain_share_settings_and_the_model_volume() -> None:
    svcs = services()
    worker, retrain = env_of(svcs["worker"]), env_of(svcs["retrain"])
    assert worker == retrain
    model_dir = worker[f"{ENV_PREFIX}MODEL_DIR"]
    for name in ("worker", "retrain"):
        mounts = [v.split(":") for v in svcs[name]["volumes"]]
        assert ["models", model_dir] in [m[:2] for m in mounts], name
    assert "models" in compose()["volumes"]
    # k8s: both deployments mount the same RWX claim at SEGMENTER_MODEL_DIR.
    pvc = one("PersistentVolumeClaim", "segmenter-models")
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]
    cm_dir = one("ConfigMap", "segmenter-config")["data"][f"{ENV_PREFIX}MODEL_DIR"]
    for dep in ("segmenter-worker", "segmenter-retrain"):
        spec = one("Deployment", dep)["spec"]["template"]["spec"]
        claims = {
            v["name"]: v["persistentVolumeClaim"]["claimName"]
            for v in spec["volumes"]
            if "persistentVolumeClaim" in v
        }
        mounts = {m["mountPath"]: m["name"] for m in spec["containers"][0]["volumeMounts"]}
        assert claims.get(mounts.get(cm_dir, "")) == "segmenter-models", dep


def test_compose_named_volumes_are_declared() -> None:
    declared = set(compose()["volumes"])
    for name, svc in services().items():
        for vol in svc.get("volumes", []):
            source = vol.split(":", 1)[0]
            if not source.startswith((".", "/")):
                assert source in declared, f"{name} uses undeclared volume {source}"


# -------------------------------------------------------------------- topics


def test_kafka_init_creates_every_topic_the_code_uses(clean_env: pytest.MonkeyPatch) -> None:
    settings = Settings()
    wanted = {
        settings.topic_clickstream,
        settings.topic_orders,
        settings.topic_segments,
        settings.topic_dlq,
        MODELS_TOPIC,
    }
    created = created_topics()
    assert wanted <= set(created), f"kafka-init does not create {wanted - set(created)}"
    for topic, argv in created.items():
        assert argv[0].endswith("kafka-topics.sh"), argv
        assert "--if-not-exists" in argv, topic
        assert flag(argv, "--replication-factor") == ["1"], topic
        assert flag(argv, "--bootstrap-server") == ["kafka:9092"], topic


def test_compacted_topics_are_created_compacted(clean_env: pytest.MonkeyPatch) -> None:
    created = created_topics()
    settings = Settings()
    compacted = {
        t.topic
        for t in topic_specs(settings)
        if (t.config or {}).get("cleanup.policy") == "compact"
    }
    assert settings.topic_segments in compacted  # the contract: customer-segments is compacted
    for topic in compacted | {MODELS_TOPIC}:
        assert "cleanup.policy=compact" in flag(created[topic], "--config"), topic
    for topic in (settings.topic_clickstream, settings.topic_orders, settings.topic_dlq):
        assert "cleanup.policy=compact" not in flag(created[topic], "--config"), topic


def test_partition_counts_match_the_settings(clean_env: pytest.MonkeyPatch) -> None:
    created = created_topics()
    settings = Settings()
    partitions = {t: int(flag(argv, "--partitions")[0]) for t, argv in created.items()}
    # Co-partitioned: the two inputs must have the same count (Faust assigns them together).
    assert partitions[settings.topic_clickstream] == partitions[settings.topic_orders]
    n = partitions[settings.topic_clickstream]
    assert int(env_of(services()["worker"])[f"{ENV_PREFIX}TOPIC_PARTITIONS"]) == n
    cm = one("ConfigMap", "segmenter-config")["data"]
    assert int(cm[f"{ENV_PREFIX}TOPIC_PARTITIONS"]) == n
    for spec in topic_specs(settings.model_copy(update={"topic_partitions": n})):
        assert partitions[spec.topic] == spec.num_partitions, spec.topic


def test_kafka_init_runs_after_kafka_is_healthy_and_once() -> None:
    svc = services()["kafka-init"]
    assert svc["depends_on"]["kafka"]["condition"] == "service_healthy"
    assert str(svc["restart"]) == "no"


# -------------------------------------------------------------------- images


def all_images() -> list[tuple[str, str]]:
    images = [(f"compose/{n}", s["image"]) for n, s in services().items() if "image" in s]
    images += [(f"k8s/{dep}/{c['name']}", c["image"]) for dep, c in containers()]
    stages = dockerfile_stages()
    images += [
        (f"Dockerfile/{name}", stage["from"])
        for name, stage in stages.items()
        if stage["from"] not in stages
    ]
    return images


def test_images_are_pinned() -> None:
    images = all_images()
    assert len(images) >= 10
    for where, image in images:
        assert image_is_pinned(image), f"{where}: {image!r} is not pinned to a versioned tag"


def test_image_pin_rule() -> None:
    assert image_is_pinned("redis:7.2.5")
    assert image_is_pinned("ghcr.io/example/segmenter-worker:0.1.0")
    assert image_is_pinned("localhost:5000/x:1.0")
    assert not image_is_pinned("redis")
    assert not image_is_pinned("redis:latest")
    assert not image_is_pinned("localhost:5000/x")
    assert not image_is_pinned("grafana/grafana:main")


# ------------------------------------------------------------- compose health


def test_every_compose_service_has_a_healthcheck() -> None:
    for name, svc in services().items():
        check = svc.get("healthcheck")
        assert check, f"{name} has no healthcheck"
        assert not check.get("disable"), name
        test = check["test"]
        assert isinstance(test, list) and test[0] in ("CMD", "CMD-SHELL") and len(test) > 1, name


def test_depends_on_uses_conditions() -> None:
    svcs = services()
    for name, svc in svcs.items():
        deps = svc.get("depends_on", {})
        assert isinstance(deps, dict), f"{name}: depends_on must name conditions"
        for dep, how in deps.items():
            assert dep in svcs, f"{name} depends on unknown {dep}"
            condition = how["condition"]
            assert condition in ("service_healthy", "service_completed_successfully"), name
            if condition == "service_healthy":
                assert "healthcheck" in svcs[dep], f"{name} waits for {dep}'s health"
    for name in ("worker", "retrain"):
        deps = svcs[name]["depends_on"]
        assert deps["kafka-init"]["condition"] == "service_completed_successfully"
        assert deps["redis"]["condition"] == "service_healthy"
    assert svcs["grafana"]["depends_on"]["prometheus"]["condition"] == "service_healthy"


def test_worker_runs_two_replicas() -> None:
    worker = services()["worker"]
    assert worker["deploy"]["replicas"] == 2
    assert "container_name" not in worker  # would forbid replicas
    assert not worker.get("ports"), "fixed host ports would collide between replicas"
    assert one("Deployment", "segmenter-worker")["spec"]["replicas"] == 2
    assert one("Deployment", "segmenter-retrain")["spec"]["replicas"] == 1


def test_compose_builds_the_right_targets_and_commands() -> None:
    svcs = services()
    assert svcs["worker"]["build"]["target"] == "worker"
    assert svcs["retrain"]["build"]["target"] == "retrain"
    assert svcs["retrain"]["command"] == ["retrain", "--every", "24h"]


def test_published_ports_are_local_only() -> None:
    for name, svc in services().items():
        for port in svc.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port} to all interfaces"
    assert "127.0.0.1:29092:29092" in services()["kafka"]["ports"]
    env = env_of(services()["kafka"])
    assert "EXTERNAL://localhost:29092" in env["KAFKA_ADVERTISED_LISTENERS"]
    assert "PLAINTEXT://kafka:9092" in env["KAFKA_ADVERTISED_LISTENERS"]


def test_prometheus_and_grafana_mount_the_repo_config() -> None:
    svcs = services()
    prom_mounts = {v.split(":")[1]: v.split(":")[0] for v in svcs["prometheus"]["volumes"]}
    assert prom_mounts["/etc/prometheus/prometheus.yml"] == "./deploy/prometheus/prometheus.yml"
    for rule_file in yaml.safe_load(PROMETHEUS.read_text())["rule_files"]:
        assert rule_file in prom_mounts, f"Prometheus reads {rule_file}, compose does not mount it"
        assert (REPO / prom_mounts[rule_file]).is_file()
    graf_mounts = {v.split(":")[1]: v.split(":")[0] for v in svcs["grafana"]["volumes"]}
    assert graf_mounts["/etc/grafana/provisioning"] == "./deploy/grafana/provisioning"
    dash_dir = yaml.safe_load(GRAFANA_DASHBOARDS.read_text())["providers"][0]["options"]["path"]
    assert graf_mounts[f"{dash_dir}/segmenter.json"] == "./deploy/grafana/segmenter.json"


# --------------------------------------------------------------------- ports


def metrics_port() -> int:
    ports = {int(env_of(services()[s])[f"{ENV_PREFIX}METRICS_PORT"]) for s in ("worker", "retrain")}
    ports.add(int(one("ConfigMap", "segmenter-config")["data"][f"{ENV_PREFIX}METRICS_PORT"]))
    assert len(ports) == 1, f"metrics ports disagree: {ports}"
    return ports.pop()


def test_prometheus_scrapes_the_metrics_port() -> None:
    port = metrics_port()
    assert port == Settings.model_fields["metrics_port"].default
    jobs = {j["job_name"]: j for j in yaml.safe_load(PROMETHEUS.read_text())["scrape_configs"]}
    targets: list[tuple[str, int]] = []
    for job in jobs.values():
        for sd in job.get("dns_sd_configs", []):
            targets += [(name, int(sd["port"])) for name in sd["names"]]
        for sc in job.get("static_configs", []):
            for t in sc["targets"]:
                host, _, p = t.rpartition(":")
                targets.append((host, int(p)))
    assert {host for host, _ in targets} >= {"worker", "retrain"}
    for host, p in targets:
        assert host in services(), f"Prometheus scrapes {host}, not a compose service"
        assert p == port, f"Prometheus scrapes {host}:{p}, the service listens on {port}"


def test_healthchecks_hit_the_metrics_port() -> None:
    port = metrics_port()
    svcs = services()
    assert f"127.0.0.1:{port}/healthz" in " ".join(svcs["worker"]["healthcheck"]["test"])
    assert f"127.0.0.1:{port}/metrics" in " ".join(svcs["retrain"]["healthcheck"]["test"])
    worker_check = effective(dockerfile_stages(), "worker", "HEALTHCHECK")
    assert worker_check and f"http://127.0.0.1:{port}/healthz" in worker_check
    assert "urllib" in worker_check  # no curl in slim images
    exposed = effective(dockerfile_stages(), "worker", "EXPOSE")
    assert exposed == str(port)


def test_k8s_ports_and_probes_agree() -> None:
    port = metrics_port()
    for dep in ("segmenter-worker", "segmenter-retrain"):
        c = one("Deployment", dep)["spec"]["template"]["spec"]["containers"][0]
        named = {p["name"]: p["containerPort"] for p in c["ports"]}
        assert named == {"metrics": port}, dep
        for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
            if probe in c:
                target = c[probe]["httpGet"]["port"]
                assert named.get(target, target) == port, f"{dep} {probe}"
    worker = one("Deployment", "segmenter-worker")["spec"]["template"]["spec"]["containers"][0]
    assert worker["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert worker["readinessProbe"]["httpGet"]["path"] == "/readyz"
    for svc_name in ("segmenter-worker", "segmenter-retrain"):
        svc = one("Service", svc_name)
        (svc_port,) = svc["spec"]["ports"]
        assert svc_port["name"] == "metrics"
        assert svc_port["port"] == port
        assert svc_port["targetPort"] in ("metrics", port)


# ---------------------------------------------------------------------- k8s


def test_k8s_worker_deployment() -> None:
    dep = one("Deployment", "segmenter-worker")
    pod = dep["spec"]["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] == 60
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    (c,) = pod["containers"]
    assert c["args"] == ["worker"]
    res = c["resources"]
    assert res["requests"]["cpu"] and res["requests"]["memory"]
    assert res["limits"]["cpu"] and res["limits"]["memory"]
    refs = {("configMap", r["configMapRef"]["name"]) for r in c["envFrom"] if "configMapRef" in r}
    refs |= {("secret", r["secretRef"]["name"]) for r in c["envFrom"] if "secretRef" in r}
    assert refs == {("configMap", "segmenter-config"), ("secret", "segmenter-secrets")}
    assert c["securityContext"]["allowPrivilegeEscalation"] is False


#: The worker's highest peak RSS measured at the default batch size, catching
#: up a backlog (docs/performance.md, 2026-12-07: 468-522 MiB on 600k events).
WORKER_PEAK_MIB = 522


def mebibytes(quantity: str, *, compose: bool = False) -> float:
    """A memory quantity in MiB: Kubernetes' (512Mi, 1Gi binary; 512M, 1G decimal)
    or, with ``compose``, Docker Compose's (512m, 1g, 1G: always binary)."""
    m = re.fullmatch(r"(\d+(?:\.\d+)?)([kKmMgG]i?)", quantity)
    assert m, quantity
    number, unit = float(m[1]), m[2]
    if compose:
        return number * {"k": 1 / 1024, "m": 1.0, "g": 1024.0}[unit[0].lower()]
    binary = {"Ki": 1 / 1024, "Mi": 1.0, "Gi": 1024.0}
    decimal = {"k": 1e3, "M": 1e6, "G": 1e9}
    return number * binary[unit] if unit in binary else number * decimal[unit] / 2**20


def test_the_worker_memory_limit_leaves_room_for_catching_up_a_backlog() -> None:
    """A limit under the worker's peak kills it while it catches up after an
    outage, and it restarts into the same backlog: it never catches up."""
    assert Settings.model_fields["batch_max"].default == 10_000  # the batch that peak is of
    (c,) = one("Deployment", "segmenter-worker")["spec"]["template"]["spec"]["containers"]
    assert "SEGMENTER_BATCH_MAX" not in env_of(services()["worker"])
    assert mebibytes(c["resources"]["limits"]["memory"]) >= 1.5 * WORKER_PEAK_MIB
    limits = services()["worker"]["deploy"]["resources"]["limits"]
    assert mebibytes(limits["memory"], compose=True) >= 1.5 * WORKER_PEAK_MIB


def test_k8s_retrain_deployment() -> None:
    dep = one("Deployment", "segmenter-retrain")
    pod = dep["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    assert c["args"] == ["retrain", "--every", "24h"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert dep["spec"]["strategy"]["type"] == "Recreate"
    assert "retrain" in c["image"]


def test_secret_example_holds_only_placeholders() -> None:
    secret = one("Secret", "segmenter-secrets")
    assert set(secret["stringData"]) == {f"{ENV_PREFIX}REDIS_PASSWORD", f"{ENV_PREFIX}ERASURE_KEY"}
    for value in secret["stringData"].values():
        assert value.startswith("change-me")  # a key's placeholder is long enough to start
    # Every SEGMENTER_* the Secret holds is a secret in Settings.
    for key in secret["stringData"]:
        field = Settings.model_fields[key[len(ENV_PREFIX) :].lower()]
        assert "SecretStr" in str(field.annotation), key


def test_selectors_match_the_pods() -> None:
    for dep_name, svc_name in (
        ("segmenter-worker", "segmenter-worker"),
        ("segmenter-retrain", "segmenter-retrain"),
    ):
        dep = one("Deployment", dep_name)
        pod_labels = dep["spec"]["template"]["metadata"]["labels"]
        assert dep["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
        svc = one("Service", svc_name)
        assert svc["spec"]["selector"].items() <= pod_labels.items(), svc_name
    worker_labels = one("Deployment", "segmenter-worker")["spec"]["template"]["metadata"]["labels"]
    pdb = one("PodDisruptionBudget", "segmenter-worker")
    assert pdb["spec"]["minAvailable"] == 1
    assert pdb["spec"]["selector"]["matchLabels"].items() <= worker_labels.items()


def test_servicemonitor_selects_the_services() -> None:
    (sm,) = k8s("ServiceMonitor")
    assert sm["apiVersion"] == "monitoring.coreos.com/v1"
    selector = sm["spec"]["selector"]
    (endpoint,) = sm["spec"]["endpoints"]
    assert endpoint["port"] == "metrics"
    assert endpoint["path"] == "/metrics"

    def selected(labels: dict[str, str]) -> bool:
        if not selector.get("matchLabels", {}).items() <= labels.items():
            return False
        for expr in selector.get("matchExpressions", []):
            assert expr["operator"] == "In"
            if labels.get(expr["key"]) not in expr["values"]:
                return False
        return True

    for name in ("segmenter-worker", "segmenter-retrain"):
        svc = one("Service", name)
        assert selected(svc["metadata"]["labels"]), f"ServiceMonitor misses Service {name}"
        assert endpoint["port"] in {p["name"] for p in svc["spec"]["ports"]}
    # Alert rules match job="segmenter-worker": the Service name becomes the job label.
    assert 'job="segmenter-worker"' in (REPO / "deploy/prometheus/alerts.yml").read_text()


def test_k8s_images_are_the_two_targets() -> None:
    images = {dep: c["image"] for dep, c in containers()}
    assert "segmenter-worker" in images["segmenter-worker"]
    assert "segmenter-retrain" in images["segmenter-retrain"]


# ---------------------------------------------------------------- Dockerfile


def test_dockerfile_final_stages_are_pinned_slim_and_non_root() -> None:
    stages = dockerfile_stages()
    assert {"builder", "worker", "retrain"} <= set(stages)
    for target in ("worker", "retrain"):
        root = stage_chain(stages, target)[0]["from"]
        assert re.fullmatch(r"python:3\.11\.\d+-slim(-\w+)?", root), root
        user = effective(stages, target, "USER")
        assert user is not None, f"{target} runs as root"
        name = user.split(":")[0]
        assert name not in ("root", "0"), f"{target} runs as {user}"
        assert effective(stages, target, "ENTRYPOINT") == '["segmenter"]'
    assert effective(stages, "worker", "CMD") == '["worker"]'
    assert effective(stages, "retrain", "CMD") == '["retrain", "--every", "24h"]'
    env = " ".join(r for s in stage_chain(stages, "worker") for i, r in s["lines"] if i == "ENV")
    for var in ("METRICS_HOST=0.0.0.0", "MODEL_DIR=", "DATA_DIR="):
        assert f"{ENV_PREFIX}{var}" in env


def pip_installs(stages: dict[str, dict[str, Any]], target: str) -> list[str]:
    """The `pip install` commands (split out of their RUN lines) that build ``target``."""
    return [
        command
        for stage in stage_chain(stages, target)
        for instr, rest in stage["lines"]
        if instr == "RUN"
        for command in rest.split("&&")
        if "pip install" in command and "--find-links" in command
    ]


def run_mounts(stages: dict[str, dict[str, Any]], target: str) -> list[str]:
    return [
        rest
        for stage in stage_chain(stages, target)
        for instr, rest in stage["lines"]
        if instr == "RUN" and "pip install" in rest and "--mount=" in rest
    ]


def test_worker_image_does_not_install_tensorflow() -> None:
    stages = dockerfile_stages()
    worker = pip_installs(stages, "worker")
    assert len(worker) == 1
    assert "[train]" not in worker[0] and "tensorflow" not in worker[0]
    assert "--no-index" in worker[0]
    # The wheelhouse it installs from is the one built without the train extra.
    (mount,) = run_mounts(stages, "worker")
    assert "from=builder," in mount
    retrain = pip_installs(stages, "retrain")
    assert len(retrain) == 1 and "[train]" in retrain[0]
    builder_wheels = " ".join(r for i, r in stages["builder"]["lines"] if i == "RUN")
    assert "[train]" not in builder_wheels


def test_dockerfile_version_matches_the_project() -> None:
    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    args = [rest for instr, rest in dockerfile_instructions() if instr == "ARG"]
    assert f"SEGMENTER_VERSION={version}" in args
