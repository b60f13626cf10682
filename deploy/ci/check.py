"""Validates what `kubectl kustomize` rendered for each overlay, the Grafana dashboard
and the Dockerfile. Run by .ci/deploy-check inside its venv; exits 1 listing every
problem found, so one run shows them all.

    check.py REPO_ROOT OVERLAY=RENDERED.yaml [OVERLAY=RENDERED.yaml ...]
"""

import base64
import json
import pathlib
import posixpath
import re
import sys
import tomllib

import jsonschema
import kubernetes_validate
import yaml

# The oldest Kubernetes the manifests target; strict refuses unknown fields (typos).
KUBERNETES_VERSION = "1.32.0"
CRD_SCHEMAS = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"): "servicemonitor.json",
    ("monitoring.coreos.com/v1", "PrometheusRule"): "prometheusrule.json",
}
ROLES = {"ingest", "router", "edge", "api"}
# fanout's own defaults (crates/app/src/config.rs, crates/edge/src/config.rs,
# crates/api/src/config.rs), used when the mounted fanout.toml leaves a key out.
DEFAULT_ADMIN_LISTEN = "0.0.0.0:9090"
DEFAULT_EDGE_LISTEN = "0.0.0.0:8080"
DEFAULT_API_LISTEN = "0.0.0.0:8081"
DEFAULT_DRAIN_WINDOW_MS = 10_000
DEFAULT_PUBLISH_TIMEOUT_MS = 5_000
CONFIG_MOUNT = "/etc/fanout/config"
# The environment variable that overrides edge.secrets_file (figment: FANOUT_ + the key
# path joined by a double underscore, crates/app/src/config.rs).
SECRETS_FILE_ENV = "FANOUT_EDGE__SECRETS_FILE"
# The partner Secret's name, without a kustomize hash suffix: a suffix changes with the
# content, so every change would roll the edges instead of being hot-reloaded.
PARTNER_SECRET = "fanout-partners"
# crates/edge/src/config.rs MIN_SECRET_BYTES; partner codes as
# crates/ingest/src/events.rs is_valid_partner accepts them.
MIN_SECRET_BYTES = 16
PARTNER_CODE = re.compile(r"[A-Za-z0-9._-]{1,64}")
# The api's keys file, likewise: api.keys_file is set by FANOUT_API__KEYS_FILE on the
# api only, read from the fanout-api-keys Secret (fixed name, hot-reloaded). Keys as
# crates/api/src/config.rs check_partner accepts them: MIN_KEY_BYTES, and printable
# ASCII without spaces (u8::is_ascii_graphic: they travel in a header).
KEYS_FILE_ENV = "FANOUT_API__KEYS_FILE"
API_KEYS_SECRET = "fanout-api-keys"
MIN_API_KEY_BYTES = 24
API_KEY_CHARS = re.compile(r"[\x21-\x7e]+")

problems = []


def problem(where, message):
    problems.append(f"{where}: {message}")


def read_list(path):
    """Names one per line; `#` starts a comment."""
    names = set()
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            names.add(line)
    return names


# ---------------------------------------------------------------- metric names


def code_metric_names(root):
    """Every metric name the Rust code registers. Literal names are found as string
    literals; the Kafka client metrics are built as `fanout_{stage}_...` with the stage
    passed to `KafkaClientMetrics::new(registry, "<stage>", ...)`, so those templates
    are expanded for each stage that calls it."""
    names = set()
    templates = set()
    stages = set()
    for path in sorted(root.glob("crates/*/src/**/*.rs")):
        text = path.read_text()
        names.update(re.findall(r'"(fanout_[a-z0-9_]+)"', text))
        templates.update(re.findall(r'"(fanout_\{stage\}_[a-z0-9_]+)"', text))
        stages.update(re.findall(r'KafkaClientMetrics::new\(\s*[^,]+,\s*"([a-z]+)"', text))
    for template in templates:
        for stage in stages:
            names.add(template.replace("{stage}", stage))
    # A histogram or summary is exposed as these series too.
    for name in list(names):
        for suffix in ("_bucket", "_sum", "_count"):
            names.add(name + suffix)
    return names


PROMQL_WORDS = {
    "and", "or", "unless", "by", "without", "on", "ignoring", "group_left",
    "group_right", "offset", "bool", "inf", "nan", "le",
}


def promql_metric_names(expr):
    """The metric names an expression selects: identifiers that are not functions,
    keywords or inside label matchers, grouping clauses, ranges or strings."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # strings (label values, le)
    text = re.sub(r"\$\{[^}]*\}|\$\w+", "", text)  # Grafana variables
    text = re.sub(r"\{[^}]*\}", "", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", "", text)  # ranges and subqueries
    text = re.sub(
        r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", text
    )
    # Numbers and durations (`offset 15m`, 1e3, 0x1f), whose letters are not names.
    text = re.sub(r"(?<![A-Za-z0-9_:])\d[0-9A-Za-z_.]*", "", text)
    names = set()
    for match in re.finditer(r"[a-zA-Z_:][a-zA-Z0-9_:]*", text):
        word = match.group(0)
        following = text[match.end():].lstrip()
        if following.startswith("("):  # a function or aggregation
            continue
        if word.lower() in PROMQL_WORDS:
            continue
        names.add(word)
    return names


def check_metric_names(where, exprs, known, pending_used):
    for expr in exprs:
        for name in sorted(promql_metric_names(expr)):
            if name in known["code"] or name in known["external"]:
                continue
            if name in known["pending"]:
                pending_used.add(name)
                continue
            problem(where, f"query uses {name!r}, which no crate exports: {expr.strip()}")


# ---------------------------------------------------------------- partner secrets file


def partner_lists(text, field, shape):
    """The lists a partners file (`[<partner>] <field> = [...]`) holds, as `(code, list)`,
    and what is wrong with its shape: not TOML, no partner, a bad partner code, an entry
    that is not a table, other keys, an empty list (`shape` says what the list holds)."""
    try:
        partners = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        return [f"not TOML: {error}"], []
    found = []
    lists = []
    if not partners:
        found.append("names no partner")
    for code, partner in partners.items():
        if not PARTNER_CODE.fullmatch(code):
            found.append(f"[{code}]: not a valid partner code")
        if not isinstance(partner, dict):
            found.append(f"{code}: not a table ([{code}] {field} = [...])")
            continue
        unknown = set(partner) - {field}
        if unknown:
            found.append(f"[{code}]: unknown keys {sorted(unknown)} (only `{field}`)")
        items = partner.get(field)
        if not isinstance(items, list) or not items:
            found.append(f"[{code}] {field}: must be a non-empty list of {shape}")
            continue
        lists.append((code, items))
    return found, lists


def secrets_file_problems(text):
    """What the edge's parse_secrets_file (crates/edge/src/config.rs) would refuse in an
    edge.secrets_file, plus a file naming no partner or a partner with no secret (which
    the edge's validation refuses, or which lets no client in). Never quotes a secret."""
    found, lists = partner_lists(text, "secrets", "{ kid, secret } tables")
    for code, secrets in lists:
        for index, secret in enumerate(secrets):
            where = f"[{code}] secrets[{index}]"
            if not isinstance(secret, dict):
                found.append(f"{where}: not a table {{ kid = ..., secret = ... }}")
                continue
            unknown = set(secret) - {"kid", "secret"}
            if unknown:
                found.append(f"{where}: unknown keys {sorted(unknown)} (only `kid`, `secret`)")
            if "kid" in secret and not isinstance(secret["kid"], str):
                found.append(f"{where}: kid is not a string")
            value = secret.get("secret")
            if not isinstance(value, str):
                found.append(f"{where}: no `secret` string")
            elif len(value.encode()) < MIN_SECRET_BYTES:
                found.append(f"{where}: secret shorter than {MIN_SECRET_BYTES} bytes")
    return found


def keys_file_problems(text):
    """What the api would refuse in an api.keys_file (parse_keys_file and merged_keys,
    crates/api/src/config.rs): short keys, keys not printable ASCII, one key listed for
    two partners; plus a file naming no partner or a partner with no key (no caller gets
    in as it). Never quotes a key."""
    found, lists = partner_lists(text, "keys", "strings")
    owners = {}
    for code, keys in lists:
        for index, key in enumerate(keys):
            where = f"[{code}] keys[{index}]"
            if not isinstance(key, str):
                found.append(f"{where}: not a string")
                continue
            if len(key.encode()) < MIN_API_KEY_BYTES:
                found.append(f"{where}: shorter than {MIN_API_KEY_BYTES} bytes")
            if not API_KEY_CHARS.fullmatch(key):
                found.append(f"{where}: not printable ASCII without spaces (it travels in a header)")
            owner = owners.setdefault(key, code)
            if owner != code:
                found.append(f"{where}: the same key as one of [{owner}]'s; a key acts for one partner only")
    return found


# A file a role re-reads while it runs, from a Secret mounted as a directory: the
# setting naming it, the environment variable the Deployment sets it by, the Secret
# (fixed name) it must come from, and the checker of its content.
MOUNTED_FILES = {
    "edge.secrets_file": {
        "section": "edge",
        "key": "secrets_file",
        "env": SECRETS_FILE_ENV,
        "secret": PARTNER_SECRET,
        "roles": "edges",
        "problems": secrets_file_problems,
    },
    "api.keys_file": {
        "section": "api",
        "key": "keys_file",
        "env": KEYS_FILE_ENV,
        "secret": API_KEYS_SECRET,
        "roles": "api replicas",
        "problems": keys_file_problems,
    },
}


def secret_key_text(secret, key):
    """A rendered Secret's value for `key` as text, or None if it has no such key."""
    if key in secret.get("stringData", {}):
        return secret["stringData"][key]
    if key in secret.get("data", {}):
        return base64.b64decode(secret["data"][key]).decode("utf-8", errors="replace")
    return None


def check_secrets_mount(cwhere, setting, secrets_file, mounts, volumes, secrets):
    """A container whose effective `setting` (edge.secrets_file, api.keys_file) is
    `secrets_file` must mount the setting's Secret as a whole directory there (no
    subPath: the kubelet never updates a subPath mount, so hot reload would never see a
    change), with the file's name as a key; a rendered Secret's file is checked."""
    spec = MOUNTED_FILES[setting]
    if not posixpath.isabs(secrets_file):
        problem(cwhere, f"{setting} {secrets_file!r} is not an absolute path")
        return
    directory, key = posixpath.split(posixpath.normpath(secrets_file))
    at_dir = [m for m in mounts if posixpath.normpath(m["mountPath"]) == directory]
    at_file = [m for m in mounts if posixpath.normpath(m["mountPath"]) == posixpath.normpath(secrets_file)]
    for mount in at_file:
        problem(
            cwhere,
            f"mounts {mount['name']} at the file {secrets_file} itself (subPath): the kubelet never"
            f" updates it, so a changed Secret is not reloaded; mount the Secret at {directory}",
        )
    if not at_dir:
        if not at_file:
            problem(cwhere, f"{setting} is {secrets_file}, but nothing is mounted at {directory}; fanout exits at start")
        return
    for mount in at_dir:
        mwhere = f"{cwhere} volumeMount {mount['name']}"
        if "subPath" in mount or "subPathExpr" in mount:
            problem(mwhere, f"uses subPath at {directory}: the kubelet never updates it; mount the whole Secret")
        volume = volumes.get(mount["name"])
        if volume is None or "secret" not in volume:
            problem(mwhere, f"is not a Secret volume, but {directory} holds {setting}")
            continue
        source = volume["secret"]
        if source["secretName"] != spec["secret"]:
            problem(
                mwhere,
                f"mounts Secret {source['secretName']}, want {spec['secret']} (a generated name with a"
                f" hash suffix rolls the {spec['roles']} on every change; use disableNameSuffixHash)",
            )
        items = source.get("items")
        if items is not None and not any(item.get("key") == key and item.get("path") == key for item in items):
            problem(mwhere, f"Secret {source['secretName']}'s items do not project key {key} as {key}")
        secret = secrets.get(source["secretName"])
        if secret is None:
            continue  # external: created by hand, so its content cannot be checked here
        text = secret_key_text(secret, key)
        if text is None:
            problem(mwhere, f"Secret {source['secretName']} has no key {key} ({setting} is {secrets_file})")
            continue
        for found in spec["problems"](text):
            problem(f"{mwhere}: Secret {source['secretName']} key {key}", found)


# ---------------------------------------------------------------- Kubernetes objects


def validate_schema(where, obj, schema_dir):
    key = (obj.get("apiVersion"), obj.get("kind"))
    if key in CRD_SCHEMAS:
        schema = json.loads((schema_dir / CRD_SCHEMAS[key]).read_text())
        for error in jsonschema.Draft202012Validator(schema).iter_errors(obj):
            path = "/".join(str(part) for part in error.absolute_path)
            problem(where, f"{path}: {error.message}")
        return
    try:
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.ValidationError as error:
        path = "/".join(str(part) for part in error.path)
        problem(where, f"{path}: {error.message}")
    except kubernetes_validate.SchemaNotFoundError:
        problem(where, f"no schema for {key[0]} {key[1]} (add one under deploy/ci/schemas)")


def port_of(listen):
    return int(listen.rsplit(":", 1)[1])


# The roles that serve clients: their client port's name and listen default, the
# hot-reloaded file they must read, and the setting bounding what SIGTERM starts
# (section, key, default), which must fit in the grace period after the preStop sleep.
CLIENT_ROLES = {
    "edge": {
        "port": "client",
        "default_listen": DEFAULT_EDGE_LISTEN,
        "file": "edge.secrets_file",
        "shutdown": ("edge", "drain_window_ms", DEFAULT_DRAIN_WINDOW_MS),
    },
    "api": {
        "port": "http",
        "default_listen": DEFAULT_API_LISTEN,
        "file": "api.keys_file",
        "shutdown": ("api", "publish_timeout_ms", DEFAULT_PUBLISH_TIMEOUT_MS),
    },
}


def pre_stop_sleep(cwhere, container):
    """The seconds a container's preStop hook sleeps: 0 without one, None (reported) if
    it is not a plain sleep."""
    pre_stop = container.get("lifecycle", {}).get("preStop", {})
    if "exec" in pre_stop:
        command = pre_stop["exec"].get("command", [])
        if len(command) == 2 and command[0] == "sleep":
            return float(command[1])
        problem(cwhere, f"preStop {command!r} is not a plain sleep; cannot check the grace period")
        return None
    elif "sleep" in pre_stop:
        return pre_stop["sleep"]["seconds"]
    return 0


def pod_facts(where, deployment, config_maps, secrets, external_secrets, fanout_configs):
    """Checks one Deployment's pod template; returns its container ports by name."""
    spec = deployment["spec"]["template"]["spec"]
    pod_security = spec.get("securityContext", {})
    containers = spec.get("containers", [])
    ports = {}
    # Mounted config, for the drain window and the admin port.
    config = {}
    for volume in spec.get("volumes", []):
        if "configMap" in volume:
            name = volume["configMap"]["name"]
            if name not in config_maps:
                problem(where, f"volume {volume['name']} mounts ConfigMap {name}, not rendered")
            elif name in fanout_configs:
                config = fanout_configs[name]
        if "secret" in volume:
            name = volume["secret"]["secretName"]
            if name not in secrets and name not in external_secrets:
                problem(where, f"volume {volume['name']} mounts Secret {name}, neither rendered nor listed as external")
    volumes = {volume["name"]: volume for volume in spec.get("volumes", [])}
    for container in containers:
        cwhere = f"{where} container {container['name']}"
        for port in container.get("ports", []):
            ports[port.get("name")] = port["containerPort"]
        # Requests and limits, for CPU and memory: without them the scheduler packs
        # blindly and one edge's table can starve its node.
        resources = container.get("resources", {})
        for kind in ("requests", "limits"):
            for resource in ("cpu", "memory"):
                if resource not in resources.get(kind, {}):
                    problem(cwhere, f"no resources.{kind}.{resource}")
        # Not root: runAsNonRoot makes the kubelet refuse a root image, and a uid of 0
        # anywhere would defeat it.
        security = container.get("securityContext", {})
        non_root = security.get("runAsNonRoot", pod_security.get("runAsNonRoot"))
        uid = security.get("runAsUser", pod_security.get("runAsUser"))
        if non_root is not True:
            problem(cwhere, "runAsNonRoot is not true")
        if uid is None or uid == 0:
            problem(cwhere, f"runAsUser is {uid!r}; must be a non-zero uid")
        if security.get("allowPrivilegeEscalation") is not False:
            problem(cwhere, "allowPrivilegeEscalation is not false")
        for source in container.get("envFrom", []):
            if "secretRef" in source:
                name = source["secretRef"]["name"]
                if name not in secrets and name not in external_secrets:
                    problem(cwhere, f"envFrom Secret {name}, neither rendered nor listed as external")
        env = {item["name"]: item.get("value") for item in container.get("env", [])}
        args = container.get("args", [])
        role = args[0] if args else None
        if role not in ROLES:
            problem(cwhere, f"args {args!r} do not start with a role ({', '.join(sorted(ROLES))})")
        # The config is what fanout reads only if FANOUT_CONFIG names the mounted file.
        mounts = {mount["mountPath"]: mount["name"] for mount in container.get("volumeMounts", [])}
        # edge.secrets_file and api.keys_file as this container sees them: every role
        # validates the whole config at start and reads the files named, so whichever
        # role names one (in fanout.toml or the environment) must mount it.
        mounted_files = {}
        for setting, spec_of in MOUNTED_FILES.items():
            path = env.get(spec_of["env"]) or config.get(spec_of["section"], {}).get(spec_of["key"])
            mounted_files[setting] = path
            if path:
                check_secrets_mount(cwhere, setting, path, container.get("volumeMounts", []), volumes, secrets)
        if env.get("FANOUT_CONFIG") != f"{CONFIG_MOUNT}/fanout.toml" or CONFIG_MOUNT not in mounts:
            problem(cwhere, f"FANOUT_CONFIG must be {CONFIG_MOUNT}/fanout.toml, mounted from the ConfigMap")
        # Probes on the admin port: the client ports answer WebSockets and the api's
        # routes, not /readyz.
        admin_port = port_of(config.get("listen", {}).get("admin", DEFAULT_ADMIN_LISTEN))
        if ports.get("admin") != admin_port:
            problem(cwhere, f"port 'admin' is {ports.get('admin')}, config listen.admin is {admin_port}")
        for probe_name, path in (("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")):
            probe = container.get(probe_name)
            if not probe or "httpGet" not in probe:
                problem(cwhere, f"no {probe_name} with httpGet")
                continue
            get = probe["httpGet"]
            port = get.get("port")
            port_number = ports.get(port) if isinstance(port, str) else port
            if port_number != admin_port:
                problem(cwhere, f"{probe_name} uses port {port!r}, not the admin port {admin_port}")
            if get.get("path") != path:
                problem(cwhere, f"{probe_name} path is {get.get('path')!r}, want {path}")
        client = CLIENT_ROLES.get(role)
        if client:
            listen = config.get("listen", {}).get(role, client["default_listen"])
            client_port = port_of(listen)
            if ports.get(client["port"]) != client_port:
                problem(cwhere, f"port {client['port']!r} is {ports.get(client['port'])}, config listen.{role} is {client_port}")
            setting = client["file"]
            if not mounted_files[setting]:
                env_name = MOUNTED_FILES[setting]["env"]
                problem(cwhere, f"no {setting} (in fanout.toml or {env_name}): the {MOUNTED_FILES[setting]['secret']} Secret is not read")
            # The grace period runs from the start of preStop; what SIGTERM starts
            # (the edge's drain, the api's last publishes) must fit in it after the
            # sleep, or the kubelet SIGKILLs clients mid-way.
            grace = spec.get("terminationGracePeriodSeconds", 30)
            sleep_seconds = pre_stop_sleep(cwhere, container)
            if sleep_seconds == 0:
                problem(
                    cwhere,
                    "no preStop sleep: the endpoints and the load balancer would still send to a"
                    " pod that has stopped accepting",
                )
            sleep_seconds = sleep_seconds or 0
            section, key, default = client["shutdown"]
            shutdown_ms = config.get(section, {}).get(key, default)
            if not grace > sleep_seconds + shutdown_ms / 1000:
                problem(
                    cwhere,
                    f"terminationGracePeriodSeconds {grace} is not above preStop sleep {sleep_seconds} s"
                    f" + {section}.{key} {shutdown_ms} ms",
                )
    return ports


def check_overlay(name, rendered_path, schema_dir, known, pending_used, external_secrets, dockerfile):
    docs = [doc for doc in yaml.safe_load_all(rendered_path.read_text()) if doc]
    if not docs:
        problem(name, "rendered nothing")
        return
    by_kind = {}
    for obj in docs:
        where = f"{name}: {obj.get('kind')}/{obj.get('metadata', {}).get('name')}"
        validate_schema(where, obj, schema_dir)
        by_kind.setdefault(obj.get("kind"), {})[obj["metadata"]["name"]] = obj

    config_maps = by_kind.get("ConfigMap", {})
    secrets = by_kind.get("Secret", {})
    fanout_configs = {}
    for cm_name, config_map in config_maps.items():
        text = config_map.get("data", {}).get("fanout.toml")
        if text is None:
            continue
        try:
            fanout_configs[cm_name] = tomllib.loads(text)
        except tomllib.TOMLDecodeError as error:
            problem(f"{name}: ConfigMap/{cm_name}", f"fanout.toml is not TOML: {error}")
    for secret_name in external_secrets:
        if secret_name in secrets:
            problem(name, f"Secret {secret_name} is listed as external but rendered")

    deployments = by_kind.get("Deployment", {})
    roles = set()
    pod_ports = {}
    for dep_name, deployment in deployments.items():
        where = f"{name}: Deployment/{dep_name}"
        ports = pod_facts(where, deployment, config_maps, secrets, external_secrets, fanout_configs)
        labels = deployment["spec"]["template"]["metadata"].get("labels", {})
        pod_ports[dep_name] = (labels, ports)
        for container in deployment["spec"]["template"]["spec"]["containers"]:
            args = container.get("args", [])
            if args:
                roles.add(args[0])
            uid = container.get("securityContext", {}).get(
                "runAsUser", deployment["spec"]["template"]["spec"].get("securityContext", {}).get("runAsUser")
            )
            if dockerfile["user"] is not None and str(uid) != dockerfile["user"]:
                problem(where, f"runAsUser {uid} is not the Dockerfile's USER {dockerfile['user']}")
            for port in ports.values():
                if str(port) not in dockerfile["expose"]:
                    problem(where, f"port {port} is not EXPOSEd by the Dockerfile")
    if roles != ROLES:
        problem(name, f"Deployments run roles {sorted(roles)}, want {sorted(ROLES)}")

    def selected(selector):
        return [
            (dep, ports) for dep, (labels, ports) in pod_ports.items()
            if selector and all(labels.get(k) == v for k, v in selector.items())
        ]

    # Every Service reaches pods, on ports they have.
    for svc_name, service in by_kind.get("Service", {}).items():
        where = f"{name}: Service/{svc_name}"
        targets = selected(service["spec"].get("selector", {}))
        if not targets:
            problem(where, "selects no Deployment's pods")
        for port in service["spec"]["ports"]:
            target = port.get("targetPort", port["port"])
            for dep, ports in targets:
                if target not in ports and target not in ports.values():
                    problem(where, f"targetPort {target!r} is not a port of {dep}")
    # Each client-facing role is reachable: a Service selects its pods on its client port.
    for role, client in sorted(CLIENT_ROLES.items()):
        role_deployments = {
            dep for dep, deployment in deployments.items()
            if any(c.get("args", [])[:1] == [role] for c in deployment["spec"]["template"]["spec"]["containers"])
        }
        served = False
        for service in by_kind.get("Service", {}).values():
            for dep, ports in selected(service["spec"].get("selector", {})):
                if dep not in role_deployments:
                    continue
                for port in service["spec"]["ports"]:
                    target = port.get("targetPort", port["port"])
                    if target == client["port"] or target == ports.get(client["port"]):
                        served = True
        if role_deployments and not served:
            problem(name, f"no Service reaches the {role}'s {client['port']!r} port")
    for pdb_name, pdb in by_kind.get("PodDisruptionBudget", {}).items():
        if not selected(pdb["spec"]["selector"].get("matchLabels", {})):
            problem(f"{name}: PodDisruptionBudget/{pdb_name}", "selects no Deployment's pods")
    for hpa_name, hpa in by_kind.get("HorizontalPodAutoscaler", {}).items():
        target = hpa["spec"]["scaleTargetRef"]
        if target["kind"] != "Deployment" or target["name"] not in deployments:
            problem(f"{name}: HorizontalPodAutoscaler/{hpa_name}", f"targets {target}, not a rendered Deployment")
        elif "replicas" in deployments[target["name"]]["spec"]:
            problem(f"{name}: Deployment/{target['name']}", "sets replicas although an HPA owns it")
    # The ServiceMonitor must scrape one admin Service per stage and nothing else.
    for sm_name, monitor in by_kind.get("ServiceMonitor", {}).items():
        where = f"{name}: ServiceMonitor/{sm_name}"
        match = monitor["spec"]["selector"].get("matchLabels", {})
        scraped = [
            service for service in by_kind.get("Service", {}).values()
            if all(service["metadata"].get("labels", {}).get(k) == v for k, v in match.items())
        ]
        scraped_roles = set()
        for service in scraped:
            port_names = {port.get("name") for port in service["spec"]["ports"]}
            for endpoint in monitor["spec"]["endpoints"]:
                if endpoint["port"] not in port_names:
                    problem(where, f"Service {service['metadata']['name']} has no port {endpoint['port']!r}")
            for dep, ports in selected(service["spec"]["selector"]):
                for container in deployments[dep]["spec"]["template"]["spec"]["containers"]:
                    scraped_roles.update(container.get("args", [])[:1])
        if scraped_roles != ROLES:
            problem(where, f"scrapes roles {sorted(scraped_roles)}, want {sorted(ROLES)}")
    for rule_name, rule in by_kind.get("PrometheusRule", {}).items():
        exprs = [r["expr"] for group in rule["spec"]["groups"] for r in group["rules"]]
        check_metric_names(f"{name}: PrometheusRule/{rule_name}", exprs, known, pending_used)
        # An alert without a runbook entry leaves the person paged guessing.
        for group in rule["spec"]["groups"]:
            for alert in (r["alert"] for r in group["rules"] if "alert" in r):
                if f"\n### {alert}\n" not in known["runbook"]:
                    problem(f"{name}: PrometheusRule/{rule_name}", f"alert {alert} has no '### {alert}' section in docs/operations.md")


def dashboard_exprs(node):
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "expr" and isinstance(value, str):
                yield value
            else:
                yield from dashboard_exprs(value)
    elif isinstance(node, list):
        for item in node:
            yield from dashboard_exprs(item)


def check_dashboard(path, known, pending_used):
    try:
        dashboard = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        problem(str(path), f"not JSON: {error}")
        return
    exprs = list(dashboard_exprs(dashboard.get("panels", [])))
    if not exprs:
        problem(str(path), "no panel has a query")
    check_metric_names(str(path), exprs, known, pending_used)
    ids = [panel.get("id") for panel in dashboard.get("panels", [])]
    if len(ids) != len(set(ids)):
        problem(str(path), "panel ids are not unique")


def dockerfile_facts(path):
    """The runtime stage's USER, EXPOSEd ports and ENTRYPOINT, which the manifests must
    agree with (the image is not built in CI: see docs/operations.md)."""
    text = path.read_text()
    stages = re.split(r"(?im)^FROM\s", text)
    runtime = stages[-1]
    user = re.findall(r"(?im)^USER\s+(\S+)", runtime)
    expose = set()
    for line in re.findall(r"(?im)^EXPOSE\s+(.+)$", runtime):
        expose.update(port.split("/")[0] for port in line.split())
    facts = {"user": user[-1].split(":")[0] if user else None, "expose": expose}
    if facts["user"] is None or not facts["user"].isdigit() or facts["user"] == "0":
        problem(str(path), f"runtime stage USER is {facts['user']!r}; want a numeric non-root uid (runAsNonRoot needs a number)")
    if "cargo build --release --locked -p fanout" not in text:
        problem(str(path), "does not build with `cargo build --release --locked -p fanout`")
    entrypoint = re.findall(r'(?im)^ENTRYPOINT\s+\["([^"]+)"', runtime)
    binary = entrypoint[-1] if entrypoint else None
    if not binary or not re.search(rf"(?im)^COPY\s+--from=\S+\s+\S+\s+{re.escape(binary)}\s*$", runtime):
        problem(str(path), f"ENTRYPOINT {binary!r} is not a file the runtime stage copies from the builder")
    return facts


def main(argv):
    root = pathlib.Path(argv[1])
    schema_dir = root / "deploy/ci/schemas"
    known = {
        "code": code_metric_names(root),
        "pending": read_list(root / "deploy/ci/pending-metrics.txt"),
        "external": read_list(root / "deploy/ci/external-metrics.txt"),
        "runbook": (root / "docs/operations.md").read_text(),
    }
    if not known["code"]:
        problem("crates", "found no metric names in the code; the extraction is broken")
    pending_used = set()
    dockerfile = dockerfile_facts(root / "Dockerfile")
    # Committed partner and API key files (dev's demo partner), checked even where not
    # rendered.
    for pattern, file_problems in (("partners.toml", secrets_file_problems), ("api-keys.toml", keys_file_problems)):
        for path in sorted(root.glob(f"deploy/overlays/*/{pattern}")):
            for found in file_problems(path.read_text()):
                problem(str(path.relative_to(root)), found)
    for overlay_arg in argv[2:]:
        name, rendered = overlay_arg.split("=", 1)
        external_file = root / "deploy/overlays" / name / "external-secrets.txt"
        external = read_list(external_file) if external_file.exists() else set()
        check_overlay(name, pathlib.Path(rendered), schema_dir, known, pending_used, external, dockerfile)
    check_dashboard(root / "deploy/grafana/fanout.json", known, pending_used)
    for name in sorted(pending_used - known["code"]):
        print(f"warning: {name} is used but not in the code yet (deploy/ci/pending-metrics.txt)")
    for name in sorted(known["pending"] & known["code"]):
        print(f"note: {name} is in the code now; drop it from deploy/ci/pending-metrics.txt")
    for line in problems:
        print(f"FAIL {line}")
    if problems:
        print(f"{len(problems)} problem(s) in deploy/")
        return 1
    print(f"deploy/ ok: {len(argv) - 2} overlay(s), {len(known['code'])} metric series names from the code")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
