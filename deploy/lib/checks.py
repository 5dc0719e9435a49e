#!/usr/bin/env python3
"""The Python half of deploy/check: consistency checks between deploy/, infra/ and the Rust sources.

Run by deploy/check with the venv's interpreter (PyYAML, jsonschema); each subcommand prints what
it checked and exits 1 on the first kind of failure it finds (after listing every instance of it).

What is derived from the sources, never listed by hand:
- metric names: the `metrics::counter!/gauge!/histogram!` calls of command-api, projector,
  query-api, infra and events (a name given as a `const` is resolved); histograms add `_bucket`,
  `_sum`, `_count`.
- APP_* variables: from the fields of `infra/src/settings.rs`, the struct the `config` crate
  deserializes into (`Environment::with_prefix("APP").separator("__")`): field `kafka.brokers` is
  APP_KAFKA__BROKERS, top-level `tenant` is APP_TENANT, plus APP_CONFIG_FILE which
  `Settings::load` reads itself. The code is the authority (docs/operations.md's table is compared
  with it only to print a note on drift).
- binaries: the workspace members' bin targets (Cargo.toml [[bin]], src/main.rs, src/bin/*.rs);
  stack-admin's subcommands and flags from the clap `enum Command` of infra/src/bin/stack-admin.rs.
"""

from __future__ import annotations

import glob
import json
import os
import re
import sys
import tomllib

import yaml

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
SOURCE_DIRS = ["command-api/src", "projector/src", "query-api/src", "infra/src", "events/src"]
# Series Prometheus makes itself for every target.
PROMETHEUS_SERIES = {"up", "scrape_duration_seconds", "scrape_samples_scraped"}

failures: list[str] = []


def fail(message: str) -> None:
    failures.append(message)
    print(f"  FAIL {message}")


def done(what: str) -> None:
    if failures:
        print(f"  {len(failures)} problem(s) in {what}")
        sys.exit(1)


def rel(path: str) -> str:
    return os.path.relpath(path, ROOT)


def read(path: str) -> str:
    with open(os.path.join(ROOT, path), encoding="utf-8") as f:
        return f.read()


# ---- what the sources define ---------------------------------------------------------------------


def rust_files() -> list[str]:
    files = []
    for d in SOURCE_DIRS:
        files += glob.glob(os.path.join(ROOT, d, "**", "*.rs"), recursive=True)
    return sorted(files)


def metric_inventory() -> dict[str, str]:
    """Metric name -> kind, from the macro calls in the Rust sources."""
    consts: dict[str, str] = {}
    calls: list[tuple[str, str, str]] = []
    call = re.compile(r'\b(counter|gauge|histogram)!\s*\(\s*(?:"([^"]+)"|([A-Za-z_][A-Za-z0-9_:]*))')
    const = re.compile(r'\bconst\s+([A-Z_][A-Z0-9_]*)\s*:\s*&(?:\'static\s+)?str\s*=\s*"([^"]+)"')
    for path in rust_files():
        with open(path, encoding="utf-8") as f:
            text = f.read()
        consts.update(dict(const.findall(text)))
        for kind, literal, ident in call.findall(text):
            calls.append((kind, literal, ident))
    names: dict[str, str] = {}
    for kind, literal, ident in calls:
        name = literal or consts.get(ident.split("::")[-1])
        if name is None:
            fail(f"metric name {ident} ({kind}) is not a string constant the check can resolve")
            continue
        names[name] = kind
    return names


def exposed_series(inventory: dict[str, str]) -> set[str]:
    series = set(PROMETHEUS_SERIES)
    for name, kind in inventory.items():
        if kind == "histogram":
            series |= {f"{name}_bucket", f"{name}_sum", f"{name}_count"}
        else:
            series.add(name)
    return series


def settings_structs() -> dict[str, list[tuple[str, str]]]:
    text = read("infra/src/settings.rs")
    structs = {}
    for m in re.finditer(r"pub struct (\w+)\s*\{(.*?)\n\}", text, re.S):
        fields = re.findall(r"^\s*pub (\w+):\s*([^,\n]+),", m.group(2), re.M)
        structs[m.group(1)] = fields
    return structs


def app_variables() -> tuple[set[str], set[str]]:
    """(exact APP_* names, prefixes of map-valued settings) the services read."""
    structs = settings_structs()
    if "Settings" not in structs:
        fail("infra/src/settings.rs has no `pub struct Settings`")
        return set(), set()
    names, prefixes = {"APP_CONFIG_FILE"}, set()

    def walk(struct: str, prefix: str, depth: int) -> None:
        for field, ty in structs[struct]:
            key = prefix + field.upper()
            ty = ty.strip()
            if ty in structs and depth < 5:
                walk(ty, key + "__", depth + 1)
            elif "Map<" in ty:
                prefixes.add(f"APP_{key}__")
            else:
                names.add(f"APP_{key}")

    walk("Settings", "", 0)
    return names, prefixes


def check_app_names(found: dict[str, list[str]]) -> None:
    """`found`: APP_* name -> where it is set."""
    names, prefixes = app_variables()
    for name, places in sorted(found.items()):
        if name in names or any(name.startswith(p) for p in prefixes):
            continue
        close = [n for n in names if n.replace("_", "") == name.replace("_", "")]
        hint = f" (did you mean {close[0]}?)" if close else ""
        fail(f"{name} set in {', '.join(sorted(set(places)))} is not a setting of infra/src/settings.rs{hint}")


def workspace_bins() -> dict[str, str]:
    """Binary name -> crate directory, for every workspace member."""
    root = tomllib.loads(read("Cargo.toml"))
    bins = {}
    for member in root["workspace"]["members"]:
        manifest = tomllib.loads(read(f"{member}/Cargo.toml"))
        package = manifest["package"]["name"]
        declared = manifest.get("bin", [])
        for b in declared:
            bins[b["name"]] = member
        autobins = manifest["package"].get("autobins", True)
        if autobins:
            if os.path.exists(os.path.join(ROOT, member, "src/main.rs")) and not any(
                b.get("path") == "src/main.rs" for b in declared
            ):
                bins[package] = member
            for p in glob.glob(os.path.join(ROOT, member, "src/bin/*.rs")):
                name = os.path.splitext(os.path.basename(p))[0]
                if not any(b.get("path") == f"src/bin/{name}.rs" for b in declared):
                    bins[name] = member
    return bins


def stack_admin_commands() -> dict[str, set[str]]:
    """Subcommand -> its long flags, from the clap derive of stack-admin."""
    text = read("infra/src/bin/stack-admin.rs")
    m = re.search(r"enum Command\s*\{(.*?)\n\}", text, re.S)
    if not m:
        fail("no `enum Command` in infra/src/bin/stack-admin.rs")
        return {}
    body = m.group(1)
    commands = {}
    for v in re.finditer(r"^    (\w+)\s*(\{.*?^    \}|,)", body, re.M | re.S):
        variant, fields = v.group(1), v.group(2)
        kebab = re.sub(r"(?<!^)(?=[A-Z])", "-", variant).lower()
        flags = {"--" + f.replace("_", "-") for f in re.findall(r"^\s*(\w+):", fields, re.M)}
        commands[kebab] = flags | {"--help"}
    return commands


def check_command_line(argv: list[str], where: str, bins: dict[str, str], admin: dict[str, set[str]]) -> None:
    if not argv:
        return
    binary = os.path.basename(argv[0])
    if binary in ("sh", "bash") and len(argv) >= 3 and argv[1] == "-c":
        for part in re.split(r"&&|\|\||;", argv[2]):
            check_command_line(part.split(), where, bins, admin)
        return
    if binary not in bins:
        fail(f"{where}: `{binary}` is not a binary of the workspace ({', '.join(sorted(bins))})")
        return
    if binary == "stack-admin":
        if len(argv) < 2 or argv[1] not in admin:
            fail(f"{where}: stack-admin subcommand {argv[1:2]} is not one of {sorted(admin)}")
            return
        for arg in argv[2:]:
            flag = arg.split("=")[0]
            if flag.startswith("--") and flag not in admin[argv[1]]:
                fail(f"{where}: `stack-admin {argv[1]}` has no flag {flag} ({sorted(admin[argv[1]])})")


# ---- PromQL --------------------------------------------------------------------------------------

PROMQL_KEYWORDS = {
    "and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right",
    "bool", "offset", "inf", "nan", "start", "end", "atan2",
}


def promql_metrics(expr: str) -> set[str]:
    """Metric (or recorded series) names an expression selects: identifiers that are not
    functions, keywords, label names in matchers or grouping clauses, durations or variables."""
    s = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    s = re.sub(r"'(?:[^'\\]|\\.)*'", "''", s)
    s = re.sub(r"`[^`]*`", "", s)
    s = re.sub(r"\$\{[^}]*\}|\$\w+", "", s)
    s = re.sub(r"\{[^}]*\}", "", s)
    s = re.sub(r"\[[^\]]*\]", "", s)
    s = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", s)
    s = re.sub(r"\boffset\s+-?[0-9][0-9a-z]*", " ", s)
    names = set()
    for m in re.finditer(r"(?<![\w.:])([A-Za-z_:][A-Za-z0-9_:]*)(\s*\()?", s):
        if m.group(2) or m.group(1) in PROMQL_KEYWORDS:
            continue
        names.add(m.group(1))
    return names


def check_exprs(exprs: list[tuple[str, str]], known: set[str]) -> int:
    checked = 0
    for where, expr in exprs:
        for name in sorted(promql_metrics(expr)):
            checked += 1
            if name not in known:
                fail(f"{where}: `{name}` is not a metric any service exposes (expr: {expr})")
    return checked


def rules_recorded(path: str) -> tuple[set[str], list[tuple[str, str]]]:
    with open(path, encoding="utf-8") as f:
        doc = yaml.safe_load(f)
    recorded, exprs = set(), []
    for group in doc.get("groups", []):
        for rule in group.get("rules", []):
            label = rule.get("record") or rule.get("alert")
            if "record" in rule:
                recorded.add(rule["record"])
            exprs.append((f"{rel(path)} {label}", str(rule["expr"])))
    return recorded, exprs


# ---- subcommands ---------------------------------------------------------------------------------


def cmd_metrics() -> None:
    inventory = metric_inventory()
    for name, kind in sorted(inventory.items()):
        print(f"  {kind:9} {name}")
    done("the metric inventory")


def cmd_rules(path: str) -> None:
    known = exposed_series(metric_inventory())
    recorded, exprs = rules_recorded(path)
    n = check_exprs(exprs, known | recorded)
    done(rel(path))
    print(f"  {len(exprs)} expressions, {n} metric references, all exposed by the services ({len(known)} series names known)")


def cmd_grafana(directory: str, rules: str) -> None:
    known = exposed_series(metric_inventory())
    recorded, _ = rules_recorded(rules)
    uids, titles, exprs = {}, {}, []
    files = sorted(glob.glob(os.path.join(directory, "*.json")))
    if not files:
        fail(f"no dashboards in {rel(directory)}")
    for path in files:
        name = rel(path)
        try:
            with open(path, encoding="utf-8") as f:
                d = json.load(f)
        except json.JSONDecodeError as e:
            fail(f"{name}: not JSON: {e}")
            continue
        for key in ("uid", "title", "panels", "schemaVersion", "templating"):
            if key not in d:
                fail(f"{name}: no `{key}`")
        if not isinstance(d.get("schemaVersion"), int) or not 36 <= d["schemaVersion"] <= 41:
            fail(f"{name}: schemaVersion {d.get('schemaVersion')} is not a current one (36..41)")
        uid, title = d.get("uid"), d.get("title")
        if not isinstance(uid, str) or not re.fullmatch(r"[A-Za-z0-9_-]{1,40}", uid):
            fail(f"{name}: uid {uid!r} must be 1-40 of [A-Za-z0-9_-]")
        for seen, value, what in ((uids, uid, "uid"), (titles, title, "title")):
            if value in seen:
                fail(f"{name}: {what} {value!r} is also used by {seen[value]}")
            seen[value] = name
        variables = {v.get("name"): v for v in d.get("templating", {}).get("list", [])}

        def datasources(node, path):
            if isinstance(node, dict):
                for k, v in node.items():
                    if k == "datasource" and isinstance(v, dict) and v.get("type") != "grafana":
                        yield path, v
                    else:
                        yield from datasources(v, f"{path}/{k}")
            elif isinstance(node, list):
                for i, v in enumerate(node):
                    yield from datasources(v, f"{path}/{i}")

        for where, ds_ref in datasources(d, ""):
            if ds_ref != {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}:
                fail(f"{name}: {where}/datasource is {ds_ref}, not the ${{DS_PROMETHEUS}} variable")
        ds = variables.get("DS_PROMETHEUS")
        if not ds or ds.get("type") != "datasource" or ds.get("query") != "prometheus":
            fail(f"{name}: no datasource variable DS_PROMETHEUS of type prometheus")
        for v in variables.values():
            if v.get("type") != "query":
                continue
            q = v.get("query")
            q = q.get("query") if isinstance(q, dict) else q
            m = re.fullmatch(r"\s*label_values\(\s*(.+?)\s*,\s*\w+\s*\)\s*", q or "")
            if m:
                exprs.append((f"{name} variable {v['name']}", m.group(1)))
            elif q and not re.fullmatch(r"\s*label_values\(\s*\w+\s*\)\s*", q):
                exprs.append((f"{name} variable {v['name']}", q))
        ids, cells = set(), {}
        for p in d.get("panels", []):
            pid = p.get("id")
            if pid in ids:
                fail(f"{name}: panel id {pid} used twice")
            ids.add(pid)
            g = p.get("gridPos", {})
            if not all(isinstance(g.get(k), int) for k in ("x", "y", "w", "h")) or g["x"] + g["w"] > 24:
                fail(f"{name}: panel {p.get('title')!r} has a bad gridPos {g}")
                continue
            for x in range(g["x"], g["x"] + g["w"]):
                for y in range(g["y"], g["y"] + g["h"]):
                    if (x, y) in cells:
                        fail(f"{name}: panel {p.get('title')!r} overlaps {cells[(x, y)]!r}")
                        break
                    cells[(x, y)] = p.get("title")
                else:
                    continue
                break
            if p.get("type") == "row":
                continue
            pds = (p.get("datasource") or {}).get("uid")
            if pds != "${DS_PROMETHEUS}":
                fail(f"{name}: panel {p.get('title')!r} datasource is {pds!r}, not ${{DS_PROMETHEUS}}")
            if not p.get("targets"):
                fail(f"{name}: panel {p.get('title')!r} has no query")
            for t in p.get("targets", []):
                if not t.get("expr"):
                    fail(f"{name}: panel {p.get('title')!r} target {t.get('refId')} has no expr")
                    continue
                exprs.append((f"{name} panel {p.get('title')!r}", t["expr"]))
    n = check_exprs(exprs, known | recorded)
    done(rel(directory))
    print(f"  {len(files)} dashboards, {len(exprs)} queries, {n} metric references, uids and titles unique")


def load_docs(path: str) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [d for d in yaml.safe_load_all(f) if d]


def container_app_env(c: dict) -> dict[str, str]:
    return {e["name"]: e.get("value", "") for e in c.get("env", []) if e.get("name", "").startswith("APP_")}


def cmd_k8s_rendered(path: str, schema: str, out_builtin: str) -> None:
    """Checks on the rendered manifests of one kustomization. Writes the documents that
    kubernetes-validate knows to `out_builtin`; validates the KEDA ones against `schema`."""
    import jsonschema

    docs = load_docs(path)
    name = rel(path) if path.startswith(ROOT) else os.path.basename(path)
    bins, admin = workspace_bins(), stack_admin_commands()
    with open(schema, encoding="utf-8") as f:
        validator = jsonschema.Draft202012Validator(json.load(f))
    builtin, by_kind = [], {}
    for d in docs:
        by_kind.setdefault(d.get("kind"), []).append(d)
        if d.get("apiVersion", "").startswith("keda.sh/"):
            errors = sorted(validator.iter_errors(d), key=lambda e: list(e.absolute_path))
            for e in errors:
                where = "/".join(str(p) for p in e.absolute_path)
                fail(f"{d['kind']}/{d['metadata'].get('name')}: {where}: {e.message}")
            if d.get("kind") != "ScaledObject":
                fail(f"{d.get('kind')}: no schema for this KEDA kind under deploy/k8s/schemas")
        else:
            builtin.append(d)
    with open(out_builtin, "w", encoding="utf-8") as f:
        yaml.safe_dump_all(builtin, f, sort_keys=False)

    configmaps = {c["metadata"]["name"]: c.get("data", {}) for c in by_kind.get("ConfigMap", [])}
    app_found: dict[str, list[str]] = {}
    for cm, data in configmaps.items():
        for k in data:
            if k.startswith("APP_"):
                app_found.setdefault(k, []).append(f"ConfigMap {cm}")

    def pod_checks(kind: str, obj: dict, spec: dict, long_running: bool) -> dict[str, str]:
        env: dict[str, str] = {}
        where0 = f"{kind}/{obj['metadata']['name']}"
        for c in spec.get("initContainers", []) + spec.get("containers", []):
            where = f"{where0} container {c['name']}"
            check_command_line(list(c.get("command", [])) + list(c.get("args", [])), where, bins, admin)
            res = c.get("resources", {})
            for part in ("requests", "limits"):
                for r in ("cpu", "memory"):
                    if r not in res.get(part, {}):
                        fail(f"{where}: no resources.{part}.{r}")
            for e in c.get("envFrom", []):
                ref = e.get("configMapRef", {}).get("name")
                if ref and ref not in configmaps:
                    fail(f"{where}: envFrom ConfigMap {ref} is not rendered")
            for k, v in container_app_env(c).items():
                app_found.setdefault(k, []).append(where)
                env[k] = v
            if long_running:
                probes = {p: (c.get(p) or {}).get("httpGet", {}) for p in ("livenessProbe", "readinessProbe")}
                if probes["livenessProbe"].get("path") != "/healthz":
                    fail(f"{where}: livenessProbe must GET /healthz")
                if probes["readinessProbe"].get("path") != "/readyz":
                    fail(f"{where}: readinessProbe must GET /readyz")
                ports = {p.get("name"): p["containerPort"] for p in c.get("ports", [])}
                addr = [v for k, v in container_app_env(c).items() if k.endswith("__ADDR")]
                if len(addr) != 1:
                    fail(f"{where}: sets {len(addr)} APP_…__ADDR variables, expected its own listen address")
                else:
                    port = int(addr[0].rsplit(":", 1)[1])
                    if not addr[0].startswith("0.0.0.0:"):
                        fail(f"{where}: listens on {addr[0]}; pods must listen on 0.0.0.0")
                    for probe in probes.values():
                        p = probe.get("port")
                        if ports.get(p, p) != port:
                            fail(f"{where}: a probe targets port {p}, the service listens on {port}")
                    ann = obj["spec"]["template"]["metadata"].get("annotations", {})
                    if ann.get("prometheus.io/port") not in (None, str(port)):
                        fail(f"{where}: prometheus.io/port {ann['prometheus.io/port']} != {port}")
        return env

    deployments = {d["metadata"]["name"]: d for d in by_kind.get("Deployment", [])}
    for dname, d in deployments.items():
        pod_checks("Deployment", d, d["spec"]["template"]["spec"], True)
    for j in by_kind.get("Job", []) + by_kind.get("CronJob", []):
        spec = j["spec"]["template"]["spec"] if j["kind"] == "Job" else j["spec"]["jobTemplate"]["spec"]["template"]["spec"]
        pod_checks(j["kind"], j, spec, False)
    jobs_cmds = {" ".join(c.get("command", [])[:2]) for j in by_kind.get("Job", [])
                 for c in j["spec"]["template"]["spec"].get("initContainers", []) + j["spec"]["template"]["spec"]["containers"]}
    for wanted in ("stack-admin migrate", "stack-admin topics"):
        if wanted not in jobs_cmds:
            fail(f"no Job runs `{wanted}`")

    def selects(sel: dict, d: dict) -> bool:
        labels = d["spec"]["template"]["metadata"].get("labels", {})
        return bool(sel) and all(labels.get(k) == v for k, v in sel.items())

    for svc in by_kind.get("Service", []):
        if not any(selects(svc["spec"].get("selector", {}), d) for d in deployments.values()):
            fail(f"Service/{svc['metadata']['name']} selects no Deployment")
    for dname, d in deployments.items():
        if not any(selects(p["spec"]["selector"].get("matchLabels", {}), d) for p in by_kind.get("PodDisruptionBudget", [])):
            fail(f"Deployment/{dname} has no PodDisruptionBudget")
    scaled = {h["spec"]["scaleTargetRef"]["name"]: "HorizontalPodAutoscaler" for h in by_kind.get("HorizontalPodAutoscaler", [])}
    for so in by_kind.get("ScaledObject", []):
        scaled[so["spec"]["scaleTargetRef"]["name"]] = "ScaledObject"
    for api in ("command-api", "query-api"):
        if scaled.get(api) != "HorizontalPodAutoscaler":
            fail(f"Deployment/{api} has no HorizontalPodAutoscaler")
    if scaled.get("projector") != "ScaledObject":
        fail("Deployment/projector has no KEDA ScaledObject")
    for target, kind in scaled.items():
        if target not in deployments:
            fail(f"{kind} scales {target}, which is not a rendered Deployment")
        elif "replicas" in deployments[target]["spec"]:
            fail(f"Deployment/{target} sets replicas although its {kind} owns the count")

    partitions = {data["APP_KAFKA__PARTITIONS"] for data in configmaps.values() if "APP_KAFKA__PARTITIONS" in data}
    for so in by_kind.get("ScaledObject", []):
        spec = so["spec"]
        lo, hi = spec.get("minReplicaCount", 0), spec.get("maxReplicaCount", 100)
        if lo > hi:
            fail(f"ScaledObject/{so['metadata']['name']}: minReplicaCount {lo} > maxReplicaCount {hi}")
        if spec["scaleTargetRef"]["name"] == "projector":
            if len(partitions) != 1:
                fail(f"ScaledObject/projector: expected one APP_KAFKA__PARTITIONS in the ConfigMaps, found {sorted(partitions)}")
            elif int(next(iter(partitions))) != hi:
                fail(f"ScaledObject/projector: maxReplicaCount {hi} != APP_KAFKA__PARTITIONS {next(iter(partitions))} (instances beyond the partition count idle)")
            if lo < 1:
                fail("ScaledObject/projector: minReplicaCount must be at least 1 (the lag comes from the projector itself)")
            known = exposed_series(metric_inventory())
            for i, t in enumerate(spec["triggers"]):
                if t["type"] == "prometheus":
                    check_exprs([(f"ScaledObject/projector trigger {i}", t["metadata"]["query"])], known)
    check_app_names(app_found)
    done(name)
    counts = ", ".join(f"{len(v)} {k}" for k, v in sorted(by_kind.items()))
    print(f"  {name}: {counts}; {len(app_found)} APP_* names valid; probes, resources, PDBs, autoscalers, "
          f"commands and partitions consistent")


def parse_env_file(path: str) -> dict[str, str]:
    out = {}
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            if "=" not in line:
                fail(f"{rel(path)}:{n}: not KEY=VALUE")
                continue
            k, v = line.split("=", 1)
            out[k] = v
    return out


def cmd_k8s_files(directory: str, schema: str, out_builtin: str) -> None:
    """Without kustomize: every kustomization's references exist, env files hold valid names, and
    the plain manifests are collected for kubernetes-validate (KEDA ones checked against schema)."""
    import jsonschema

    with open(schema, encoding="utf-8") as f:
        validator = jsonschema.Draft202012Validator(json.load(f))
    app_found: dict[str, list[str]] = {}
    builtin = []
    kustomizations = glob.glob(os.path.join(directory, "**", "kustomization.yaml"), recursive=True)
    for k in kustomizations:
        base = os.path.dirname(k)
        with open(k, encoding="utf-8") as f:
            doc = yaml.safe_load(f)
        refs = list(doc.get("resources", []))
        for gen in doc.get("configMapGenerator", []) + doc.get("secretGenerator", []):
            refs += gen.get("envs", []) + [x.split("=", 1)[-1] for x in gen.get("files", [])]
        for p in doc.get("patches", []):
            if "path" in p:
                refs.append(p["path"])
        for r in refs:
            if not os.path.exists(os.path.join(base, r)):
                fail(f"{rel(k)}: `{r}` does not exist")
        for gen in doc.get("configMapGenerator", []):
            for e in gen.get("envs", []):
                if os.path.exists(os.path.join(base, e)):
                    for key in parse_env_file(os.path.join(base, e)):
                        app_found.setdefault(key, []).append(rel(os.path.join(base, e)))
    for path in sorted(glob.glob(os.path.join(directory, "**", "*.yaml"), recursive=True)):
        if os.path.basename(path) == "kustomization.yaml":
            continue
        for d in load_docs(path):
            if d.get("apiVersion", "").startswith("keda.sh/"):
                for e in validator.iter_errors(d):
                    fail(f"{rel(path)} {d['kind']}: {'/'.join(map(str, e.absolute_path))}: {e.message}")
                continue
            builtin.append(d)
            spec = d.get("spec", {}).get("template", {}).get("spec", {})
            for c in spec.get("initContainers", []) + spec.get("containers", []):
                for key in container_app_env(c):
                    app_found.setdefault(key, []).append(rel(path))
    with open(out_builtin, "w", encoding="utf-8") as f:
        yaml.safe_dump_all(builtin, f, sort_keys=False)
    check_app_names(app_found)
    done(rel(directory))
    print(f"  {len(kustomizations)} kustomizations' references exist, {len(builtin)} manifests collected, "
          f"{len(app_found)} APP_* names valid")


def cmd_env_files(directory: str) -> None:
    app_found: dict[str, list[str]] = {}
    for path in glob.glob(os.path.join(directory, "**", "*.env"), recursive=True):
        for key in parse_env_file(path):
            if not key.startswith("APP_"):
                fail(f"{rel(path)}: {key} is not an APP_* setting")
            app_found.setdefault(key, []).append(rel(path))
    check_app_names(app_found)
    done("env files")
    print(f"  {len(app_found)} APP_* names in the env files are settings of infra/src/settings.rs")


def compose_env(service: dict) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(e.split("=", 1) if "=" in e else (e, "") for e in env)
    return {str(k): "" if v is None else str(v) for k, v in env.items()}


def cmd_compose(path: str) -> None:
    with open(path, encoding="utf-8") as f:
        doc = yaml.safe_load(f)  # resolves the anchors and `<<` merge keys as Compose does
    bins, admin = workspace_bins(), stack_admin_commands()
    app_found: dict[str, list[str]] = {}
    ours = 0
    for name, svc in (doc.get("services") or {}).items():
        build = svc.get("build")
        image = str(svc.get("image", ""))
        if isinstance(build, dict):
            context = os.path.normpath(os.path.join(os.path.dirname(path), build.get("context", ".")))
            dockerfile = os.path.join(context, build.get("dockerfile", "Dockerfile"))
            if not os.path.isfile(dockerfile):
                fail(f"service {name}: dockerfile {rel(dockerfile)} does not exist")
            if context != ROOT:
                fail(f"service {name}: build context {rel(context)} is not the repository root infra/Dockerfile expects")
        env = compose_env(svc)
        for k in env:
            if k.startswith("APP_"):
                app_found.setdefault(k, []).append(f"service {name}")
        if not (build or image.startswith("cqrs-backend")):
            continue
        ours += 1
        cmd = svc.get("command")
        argv = cmd if isinstance(cmd, list) else (cmd.split() if cmd else ["command-api"])
        check_command_line([str(a) for a in argv], f"service {name}", bins, admin)
        addr = [v for k, v in env.items() if k.endswith("__ADDR")]
        test = (svc.get("healthcheck") or {}).get("test", [])
        test = " ".join(test) if isinstance(test, list) else str(test)
        if addr:
            port = addr[0].rsplit(":", 1)[1]
            if not addr[0].startswith("0.0.0.0:"):
                fail(f"service {name}: listens on {addr[0]}, unreachable from outside its container")
            published = [str(p).rsplit(":", 1)[-1] for p in svc.get("ports", [])]
            if published and port not in published:
                fail(f"service {name}: listens on {port} but publishes container port(s) {published}")
            hc = re.search(r"https?://[^:/]+:(\d+)(/\S*)", test)
            if not hc or hc.group(1) != port:
                fail(f"service {name}: healthcheck `{test}` does not probe its port {port}")
            elif hc.group(2) not in ("/readyz", "/healthz"):
                fail(f"service {name}: healthcheck probes {hc.group(2)}, not /readyz or /healthz")
    check_app_names(app_found)
    done(rel(path))
    print(f"  {ours} services from infra/Dockerfile: commands are workspace binaries (stack-admin "
          f"subcommands and flags included), {len(app_found)} APP_* names valid, listen ports = healthcheck ports")


def cmd_dockerfile(path: str) -> None:
    text = read(rel(path))
    # Joined continuation lines, comments dropped.
    lines = re.sub(r"\\\n", " ", "\n".join(l for l in text.splitlines() if not l.lstrip().startswith("#"))).splitlines()
    bins = workspace_bins()
    copied = set()
    for line in lines:
        m = re.match(r"\s*(COPY|ADD)\s+(.*)", line, re.I)
        if not m or "--from" in m.group(2):
            continue
        parts = [p for p in m.group(2).split() if not p.startswith("--")]
        for src in parts[:-1]:
            copied.add(src.rstrip("/"))
            if not glob.glob(os.path.join(ROOT, src)):
                fail(f"{rel(path)}: COPY source `{src}` does not exist in the repository")
    members = tomllib.loads(read("Cargo.toml"))["workspace"]["members"]
    for needed in ["Cargo.toml", "Cargo.lock"] + members:
        if needed not in copied:
            fail(f"{rel(path)}: `{needed}` is not copied into the build (cargo needs every workspace member)")
    # Files compiled in from outside the crates would be missing from the build context.
    for src in rust_files():
        for inc in re.findall(r'include_(?:str|bytes)!\(\s*"([^"]+)"', open(src, encoding="utf-8").read()):
            target = os.path.relpath(os.path.normpath(os.path.join(os.path.dirname(src), inc)), ROOT)
            if not any(target == c or target.startswith(c + "/") for c in copied):
                fail(f"{rel(src)} includes {target}, which the Dockerfile does not copy")
    for line in lines:
        m = re.match(r"\s*(CMD|ENTRYPOINT)\s+(.*)", line, re.I)
        if m:
            arg = m.group(2).strip()
            argv = json.loads(arg) if arg.startswith("[") else arg.split()
            check_command_line(argv, f"{rel(path)} {m.group(1).upper()}", bins, {})
        m = re.match(r"\s*USER\s+(\S+)", line, re.I)
        if m and m.group(1) in ("root", "0"):
            fail(f"{rel(path)}: runs as root")
    if not re.search(r"useradd[^\n]*--uid 10001", text):
        fail(f"{rel(path)}: the runtime user is not uid 10001, which deploy/k8s's runAsUser assumes")
    if "--bins" not in text and "--bin " not in text:
        fail(f"{rel(path)}: the build does not build the binaries")
    done(rel(path))
    print(f"  COPY sources exist, all {len(members)} workspace members copied, include_str! targets inside them, "
          f"CMD is a workspace binary ({', '.join(sorted(bins))}), runtime user uid 10001")


def cmd_docs_drift() -> None:
    """A note, never a failure: APP_* names of docs/operations.md against settings.rs."""
    names, prefixes = app_variables()
    text = read("docs/operations.md")
    documented = set(re.findall(r"`(APP_[A-Z0-9_]+)`", text))
    undocumented = sorted(n for n in names - documented if n != "APP_CONFIG_FILE")
    unknown = sorted(n for n in documented - names if not any(n.startswith(p) for p in prefixes) and not n.endswith("_"))
    if undocumented:
        print(f"  note: settings not in docs/operations.md: {', '.join(undocumented)}")
    if unknown:
        print(f"  note: docs/operations.md names settings the code does not have: {', '.join(unknown)}")


COMMANDS = {
    "metrics": cmd_metrics,
    "rules": cmd_rules,
    "grafana": cmd_grafana,
    "k8s-rendered": cmd_k8s_rendered,
    "k8s-files": cmd_k8s_files,
    "env-files": cmd_env_files,
    "compose": cmd_compose,
    "dockerfile": cmd_dockerfile,
    "docs-drift": cmd_docs_drift,
}

if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1] not in COMMANDS:
        print(f"usage: {sys.argv[0]} {{{'|'.join(COMMANDS)}}} [args]", file=sys.stderr)
        sys.exit(2)
    COMMANDS[sys.argv[1]](*[os.path.abspath(a) if os.path.exists(a) else a for a in sys.argv[2:]])
