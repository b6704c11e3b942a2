"""Where the user can launch: the infra SkyPilot says is enabled, narrowed by `--infra` / `placement.infra` and
`placement.exclude`, plus the user's own clusters (Kubernetes contexts, SSH node pools) at a declared rate.

    known = enabled()                       # what `sky check` last found, cached, with its age
    where = scope(known, ["aws", "gcp/us-central1", "k8s/lab"], exclude=["aws/us-east-1"])
    where.allows("gcp", "us-central1")      # True
    where.first_line()                      # "Infra: aws, gcp/us-central1, k8s/lab (SkyPilot's `sky check`, 2 h ago)"

What is enabled comes from SkyPilot's own state, read with its own functions
(`sky.global_user_state.get_cached_enabled_clouds`, `get_cached_check_results`: SkyPilot 0.14.1, which store what
`sky check` found in `$SKY_RUNTIME_DIR or ~ /.sky/state.db`). Nothing is started: no API server, no cloud call.
`import sky` takes ~2.5 s, so the answer is kept in $REPRODUCE_HOME/infra.json and reused while state.db is
unchanged. No state.db (SkyPilot never ran here), or a state SkyPilot cannot read: unknown, and the plan is a
what-if over every cloud of the catalog.

Own clusters are priced at what the user declares per GPU-hour ($REPRODUCE_HOME/rates.yaml or the recipe's
`placement.rates`, `{k8s/lab: {H100: 2.10}}`); their GPUs come from SkyPilot (`cluster_gpus`, the adapter that
needs the live cluster).
"""
from __future__ import annotations

import datetime as dt
import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from costmodel.errors import BadInput

log = logging.getLogger(__name__)

# SkyPilot's spelling of its own-cluster clouds in `infra:` (sky/utils/infra_utils.py): k8s/<context>, ssh/<pool>.
OWN = {"k8s": "kubernetes", "kubernetes": "kubernetes", "ssh": "ssh"}
INFRA_PREFIX = {"kubernetes": "k8s", "ssh": "ssh"}


def _home() -> Path:
    return Path(os.environ.get("REPRODUCE_HOME") or os.path.join(os.path.expanduser("~"), ".reproduce"))


def sky_state_db() -> Path:
    # sky/utils/db/db_utils.get_engine: runtime_utils.get_runtime_dir_path('.sky/state.db')
    return Path(os.path.expanduser(os.environ.get("SKY_RUNTIME_DIR", "~"))) / ".sky" / "state.db"


@dataclass(frozen=True)
class Place:
    """One infra entry: a cloud, optionally one region; or an own cluster (kubernetes/ssh) and its context."""
    cloud: str
    region: str | None = None

    def __str__(self) -> str:
        cloud = INFRA_PREFIX.get(self.cloud, self.cloud)
        return f"{cloud}/{self.region}" if self.region else cloud

    @property
    def own(self) -> bool:
        return self.cloud in INFRA_PREFIX

    def covers(self, cloud: str, region: str | None) -> bool:
        return self.cloud == cloud and (self.region is None or self.region == region)


def infra_string(cloud: str, region: str | None) -> str:
    """SkyPilot's `infra:` for a placement: aws/us-east-1, k8s/lab, ssh/pool."""
    return str(Place(str(cloud).lower(), region))


def parse(spec: str) -> Place:
    """"aws" | "gcp/us-central1" | "k8s/lab" | "ssh/pool" -> Place. BadInput for a cloud SkyPilot has no catalog
    or adapter for (the region is checked against the catalog by the caller: it needs prices)."""
    from costmodel.prices import KNOWN_CLOUDS

    text = str(spec).strip()
    cloud, _, region = text.partition("/")
    cloud = cloud.lower()
    if cloud in OWN:
        if not region:
            raise BadInput(f"infra {spec!r}: name the {cloud} context or pool, e.g. {cloud}/lab")
        return Place(OWN[cloud], region)
    if cloud not in KNOWN_CLOUDS or not text or region.count("/") or (_ and not region):
        raise BadInput(f"infra {spec!r}: use CLOUD or CLOUD/REGION with CLOUD one of {', '.join(KNOWN_CLOUDS)}, "
                       f"or k8s/CONTEXT, ssh/POOL (e.g. aws, gcp/us-central1, k8s/lab)")
    return Place(cloud, region or None)


# ---------------------------------------------------------------- what SkyPilot says is enabled

@dataclass
class Knowledge:
    known: bool
    clouds: tuple = ()                 # enabled catalog clouds, lower case (aws, gcp, lambda...)
    contexts: dict = field(default_factory=dict)   # {"kubernetes": (ctx, ...), "ssh": (pool, ...)}
    as_of: float = 0.0                 # when SkyPilot last wrote it (state.db's mtime), epoch seconds
    source: str = ""
    why_unknown: str = ""

    def places(self) -> list[Place]:
        return ([Place(c) for c in self.clouds]
                + [Place(cloud, ctx) for cloud, ctxs in sorted(self.contexts.items()) for ctx in ctxs])

    def age(self) -> str:
        s = max(0.0, time.time() - self.as_of)
        return (f"{s:.0f} s" if s < 120 else f"{s / 60:.0f} min" if s < 7200 else
                f"{s / 3600:.0f} h" if s < 172800 else f"{s / 86400:.0f} days")


# Runs in a child: SkyPilot binds its state database to the first HOME it sees in a process (db_utils.DatabaseManager
# caches the engine), and importing it costs ~2.5 s the CLI need not pay when infra.json answers.
READER = r"""
import json
from sky import global_user_state, skypilot_config
from sky.clouds import cloud as sky_cloud

workspace = skypilot_config.get_active_workspace()
clouds = [str(c).lower() for c in global_user_state.get_cached_enabled_clouds(
    sky_cloud.CloudCapability.COMPUTE, workspace)]
results = global_user_state.get_cached_check_results(workspace)
print(json.dumps({"clouds": clouds, "results": results, "checked": bool(clouds or results)}))
"""


def _from_skypilot() -> tuple[list[str], dict]:
    """(enabled compute clouds, {cloud: {context: {enabled, reason}}}) through SkyPilot's own functions
    (global_user_state.get_cached_enabled_clouds, get_cached_check_results), read in a child process."""
    import subprocess
    import sys

    env = {**os.environ, "SKYPILOT_DISABLE_USAGE_COLLECTION": "1"}
    p = subprocess.run([sys.executable, "-c", READER], capture_output=True, text=True, timeout=60, env=env)
    if p.returncode != 0:
        raise RuntimeError((p.stderr.strip().splitlines() or ["SkyPilot failed"])[-1])
    out = json.loads(p.stdout.strip().splitlines()[-1])
    if not out["checked"]:
        raise LookupError("`sky check` has not run")
    return out["clouds"], out["results"]


def _contexts(clouds: list[str], results: dict) -> dict:
    out = {}
    for cloud in ("kubernetes", "ssh"):
        if cloud not in clouds:
            continue
        per = next((v for k, v in (results or {}).items() if str(k).lower() == cloud), {}) or {}
        names = sorted(ctx.removeprefix("ssh-") if cloud == "ssh" else ctx
                       for ctx, r in per.items() if ctx and (r or {}).get("enabled"))
        out[cloud] = tuple(names)
    return out


def enabled(refresh: bool = False) -> Knowledge:
    """What SkyPilot says is enabled, or Knowledge(known=False) with the reason. Never raises."""
    db = sky_state_db()
    if os.environ.get("REPRODUCE_INFRA_UNKNOWN") == "1":
        return Knowledge(False, why_unknown="REPRODUCE_INFRA_UNKNOWN=1")
    if not db.is_file():
        return Knowledge(False, why_unknown=f"no SkyPilot state ({_show(db)}): run `sky check`")
    stamp = [db.stat().st_mtime_ns, db.stat().st_size]
    wal = db.with_name(db.name + "-wal")
    if wal.is_file():
        stamp += [wal.stat().st_mtime_ns, wal.stat().st_size]
    cache = _home() / "infra.json"
    if not refresh:
        try:
            hit = json.loads(cache.read_text())
            if hit.get("db") == str(db) and hit.get("stamp") == stamp:
                return _knowledge(hit)
        except (OSError, ValueError):
            pass
    try:
        clouds, results = _from_skypilot()
    except LookupError:
        return Knowledge(False, why_unknown=f"SkyPilot's state ({_show(db)}) has no `sky check` result: run `sky check`")
    except Exception as e:   # noqa: BLE001 - an old or foreign state.db, sky not importable: unknown, not a crash
        log.debug("skypilot state: %s", e)
        return Knowledge(False, why_unknown=f"SkyPilot's state ({_show(db)}) could not be read: {type(e).__name__}")
    entry = {"db": str(db), "stamp": stamp, "as_of": max(stamp[0], stamp[2] if len(stamp) > 2 else 0) / 1e9,
             "clouds": sorted(clouds), "contexts": {k: list(v) for k, v in _contexts(clouds, results).items()}}
    write_json(cache, entry)
    return _knowledge(entry)


def write_json(path: Path, data) -> None:
    """Atomically (a reader never sees half a file); a cache that cannot be written is no error."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}")
        tmp.write_text(json.dumps(data))
        os.replace(tmp, path)
    except OSError:
        pass


def _knowledge(entry: dict) -> Knowledge:
    from costmodel.prices import KNOWN_CLOUDS

    clouds = tuple(c for c in entry["clouds"] if c in KNOWN_CLOUDS)
    contexts = {k: tuple(v) for k, v in entry["contexts"].items()}
    return Knowledge(True, clouds, contexts, entry["as_of"], f"SkyPilot's `sky check` ({_show(Path(entry['db']))})")


def _show(path: Path) -> str:
    home = os.path.expanduser("~")
    s = str(path)
    return "~" + s[len(home):] if home not in ("", "/") and s.startswith(home + os.sep) else s


# ---------------------------------------------------------------- declared rates of own clusters

def rates(recipe_rates: dict | None = None) -> dict[str, dict]:
    """{"k8s/lab": {"H100": {"usd_per_gpu_hour": 2.1, "source": "declared, 2026-12-01 (rates.yaml)"}}}: the
    recipe's `placement.rates` over $REPRODUCE_HOME/rates.yaml. Dated by the file's mtime (the recipe: today)."""
    import yaml

    out: dict[str, dict] = {}
    path = _home() / "rates.yaml"
    layers = []
    if path.is_file():
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise BadInput(f"{_show(path)}: not YAML ({str(e).splitlines()[0]}): write {{k8s/lab: {{H100: 2.10}}}}, "
                           f"dollars per GPU-hour") from None
        day = dt.datetime.fromtimestamp(path.stat().st_mtime, dt.timezone.utc).date().isoformat()
        layers.append((data, f"declared, {day} ({_show(path)})"))
    if recipe_rates:
        layers.append((recipe_rates, f"declared, {dt.date.today().isoformat()} (recipe placement.rates)"))
    for data, source in layers:
        if not isinstance(data, dict):
            raise BadInput(f"rates ({source}): expected a mapping like {{k8s/lab: {{H100: 2.10}}}}")
        for where, per_gpu in data.items():
            place = parse(where)
            if not place.own:
                raise BadInput(f"rates: {where!r} is a cloud, priced by its catalog; declare rates for k8s/CONTEXT "
                               f"or ssh/POOL")
            if not isinstance(per_gpu, dict):
                raise BadInput(f"rates: {where!r}: expected {{GPU: dollars per GPU-hour}}, e.g. {{H100: 2.10}}")
            for gpu, usd in per_gpu.items():
                try:
                    value = float(usd)
                except (TypeError, ValueError):
                    value = -1.0
                if not value >= 0 or value == float("inf"):
                    raise BadInput(f"rates: {where}: {gpu}: {usd!r} is not a price: use dollars per GPU-hour >= 0")
                out.setdefault(str(place), {})[str(gpu)] = {"usd_per_gpu_hour": value, "source": source}
    return out


def cluster_gpus(place: Place) -> dict[str, int] | None:
    """{GPU name: most GPUs of that type on one node} of a Kubernetes context or SSH pool, from SkyPilot
    (`kubernetes_utils.get_kubernetes_node_info`, a live call to the cluster's API server); None when the cluster
    cannot be asked (it is shown as unknown). The boundary tests replace."""
    try:
        from sky.provision.kubernetes import utils as kubernetes_utils

        context = f"ssh-{place.region}" if place.cloud == "ssh" else place.region
        info = kubernetes_utils.get_kubernetes_node_info(context)
        out: dict[str, int] = {}
        for node in info.node_info_dict.values():
            if node.accelerator_type and node.total.get("accelerator_count"):
                out[node.accelerator_type] = max(out.get(node.accelerator_type, 0),
                                                 int(node.total["accelerator_count"]))
        return out
    except Exception as e:   # noqa: BLE001 - unreachable cluster, no kubeconfig: unknown
        log.debug("cluster gpus %s: %s", place, e)
        return None


# ---------------------------------------------------------------- the scope a plan may use

@dataclass
class Scope:
    places: list                       # Place entries a placement may use (empty region: the whole cloud)
    exclude: list                      # Place entries never used
    knowledge: Knowledge
    pinned: bool                       # the user named the infra (--infra / placement.infra)

    @property
    def whatif(self) -> bool:
        return not self.knowledge.known

    @property
    def clouds(self) -> tuple:
        """Catalog clouds to price, in the order given."""
        out = []
        for p in self.places:
            if not p.own and p.cloud not in out and not any(x.cloud == p.cloud and x.region is None
                                                            for x in self.exclude):
                out.append(p.cloud)
        return tuple(out)

    @property
    def own(self) -> list:
        return [p for p in self.places if p.own and not self.excluded(p.cloud, p.region)]

    def excluded(self, cloud: str, region: str | None) -> bool:
        return any(x.covers(str(cloud).lower(), region) for x in self.exclude)

    def allows(self, cloud: str, region: str | None) -> bool:
        cloud = str(cloud).lower()
        return any(p.covers(cloud, region) for p in self.places) and not self.excluded(cloud, region)

    def describe(self) -> str:
        shown = ", ".join(str(p) for p in self.places) or "nothing"
        if self.exclude:
            shown += f" (excluding {', '.join(str(x) for x in self.exclude)})"
        return shown

    def first_line(self) -> str:
        k = self.knowledge
        if k.known:
            return (f"Infra: {self.describe()} ({'as named, ' if self.pinned else ''}enabled per {k.source}, "
                    f"{k.age()} old)")
        if self.pinned:
            return (f"What-if: {k.why_unknown}; priced on {self.describe()} as named, which SkyPilot has not "
                    f"confirmed is enabled")
        return (f"What-if: {k.why_unknown}; every cloud of the catalog priced, not only those you can launch on "
                f"(`reproduce all --backend sky` needs --infra or `sky check`)")

    def to_dict(self) -> dict:
        k = self.knowledge
        return {"places": [str(p) for p in self.places], "exclude": [str(x) for x in self.exclude],
                "known": k.known, "whatif": self.whatif, "pinned": self.pinned, "source": k.source,
                "age_s": round(time.time() - k.as_of) if k.known else None, "why_unknown": k.why_unknown,
                "enabled": [str(p) for p in k.places()] if k.known else None}


def scope(knowledge: Knowledge, infra=None, exclude=None, default_clouds=None, regions_of=None) -> Scope:
    """The places a plan may use. `infra` (names) narrows what is enabled; each named place must be enabled when
    SkyPilot's answer is known, and a named region must exist in the catalog (`regions_of(cloud)` -> set).
    Without knowledge and without names: every cloud of `default_clouds` (a what-if)."""
    from costmodel.prices import DEFAULT_CLOUDS

    named = [parse(x) for x in (infra or [])]
    excluded = [parse(x) for x in (exclude or [])]
    for p in named + excluded:
        if p.region and not p.own and regions_of is not None:
            known_regions = regions_of(p.cloud)
            if known_regions and p.region not in known_regions:
                raise BadInput(f"infra {p}: {p.cloud} has no region {p.region!r} in its catalog: use one of "
                               f"{', '.join(sorted(known_regions)[:12])}{', ...' if len(known_regions) > 12 else ''}")
    if knowledge.known:
        enabled_places = knowledge.places()
        for p in named:
            if p.own:
                ok = p.region in knowledge.contexts.get(p.cloud, ())
                what = f"{p.cloud} context" if p.cloud == "kubernetes" else "SSH node pool"
                if not ok:
                    have = ", ".join(str(Place(p.cloud, c)) for c in knowledge.contexts.get(p.cloud, ())) or "none"
                    raise BadInput(f"infra {p}: no enabled {what} {p.region!r} (SkyPilot has: {have}); "
                                   f"check `sky check {'kubernetes' if p.cloud == 'kubernetes' else 'ssh'}`")
            elif p.cloud not in knowledge.clouds:
                raise BadInput(f"infra {p}: {p.cloud} is not enabled in SkyPilot (enabled: "
                               f"{', '.join(str(x) for x in enabled_places) or 'none'}); run `sky check {p.cloud}`")
        places = named or enabled_places
    else:
        places = named or [Place(c) for c in (default_clouds or DEFAULT_CLOUDS)]
    return Scope(places, excluded, knowledge, bool(named))


_gpus_cache: dict = {}


def own_offers(accelerator: str, where: Scope, recipe_rates: dict | None = None) -> tuple[list, list[str]]:
    """(Offers of `accelerator` on the scope's own clusters at their declared rates, problems: one line each for a
    cluster with no rate for that GPU or too few GPUs on a node). On-demand only: SkyPilot runs no spot on them."""
    from costmodel.prices import Offer, canonical, parse_accelerator

    if not where.own:
        return [], []
    gpu, count = parse_accelerator(accelerator)
    declared = rates(recipe_rates)
    offers, problems = [], []
    for place in where.own:
        rate = next((r for name, r in declared.get(str(place), {}).items() if canonical(name).upper() == gpu.upper()),
                    None)
        if rate is None:
            problems.append(f"{place}: no declared rate for {gpu} (add {{{place}: {{{gpu}: DOLLARS_PER_GPU_HOUR}}}} to "
                            f"$REPRODUCE_HOME/rates.yaml or the recipe's placement.rates)")
            continue
        if str(place) not in _gpus_cache:
            _gpus_cache[str(place)] = cluster_gpus(place)
        have = _gpus_cache[str(place)]
        most = None if have is None else max((n for name, n in have.items() if canonical(name).upper() == gpu.upper()),
                                             default=0)
        if most is not None and most < count:
            problems.append(f"{place}: at most {most} {gpu} on one node, the stage needs {count}")
            continue
        note = "" if most is not None else "; GPU availability unknown (the cluster did not answer)"
        offers.append(Offer(place.cloud, place.region, None, f"{count}x{gpu}", gpu, count,
                            rate["usd_per_gpu_hour"] * count, None, rate["source"] + note,
                            rate["source"].split(", ")[1].split(" ")[0]))
    return offers, problems
