"""``readl promote``: the promotion gate that moves ``champion`` to ``challenger``.

Rules (params ``register``):

1. No ``challenger`` alias -> :class:`AliasNotFoundError` (run ``readl register`` first).
2. No ``champion`` yet -> the challenger becomes champion (the first model).
3. ``challenger`` is already ``champion`` -> nothing to do (passes).
4. Primary metric (``primary_metric``, a dotted metrics.json key, default ``image.AUROC`` = mean over the
   evaluation datasets; higher is better): challenger > champion + ``min_improvement``, strictly: a tie
   (within ``TIE_TOLERANCE``) never promotes, so retraining an identical model keeps the first champion;
   a challenger without the metric (null) fails.
5. No regression per dataset: for every dataset the champion was evaluated on and every metric in
   ``max_drop`` (e.g. ``pixel.AUROC: 0.02``), challenger >= champion - max_drop. A dataset the champion has
   and the challenger lacks fails; a metric the champion lacks (null) is not checked.

Values come from the versions' ``metrics.*`` tags written by ``readl register``. When the two versions were
evaluated on different data (``data_manifest_sha256`` differs) the table says so (the comparison still runs).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime

from readl.config import RegisterConfig
from readl.registry.fingerprints import METRIC_TAG_PREFIX
from readl.registry.load import require_store
from readl.registry.versions import require_alias
from readl.tracking import call, mlflow_session, tracking_uri

__all__ = ["TIE_TOLERANCE", "Check", "Decision", "compare", "gate_table", "promote"]

log = logging.getLogger(__name__)
TIE_TOLERANCE = 1e-9  # |challenger - (champion + min_improvement)| below this is a tie (metrics are floats in [0, 1])


@dataclass
class Check:
    """One row of the gate: ``scope`` is ``"all"`` (the primary metric) or a dataset name."""

    scope: str
    metric: str
    champion: float | None
    challenger: float | None
    rule: str
    passed: bool
    note: str = ""


@dataclass
class Decision:
    """The gate's outcome. ``promoted``: champion now points at the challenger (or already did)."""

    name: str
    challenger: str
    champion_before: str | None
    promoted: bool
    reason: str
    checks: list[Check] = field(default_factory=list)
    dry_run: bool = False

    @property
    def champion_after(self) -> str | None:
        return self.challenger if self.promoted and not self.dry_run else self.champion_before

    def as_dict(self) -> dict:
        return {
            "name": self.name,
            "challenger": self.challenger,
            "champion_before": self.champion_before,
            "champion_after": self.champion_after,
            "promoted": self.promoted,
            "reason": self.reason,
            "dry_run": self.dry_run,
            "checks": [c.__dict__ for c in self.checks],
        }


def _metric(tags: dict, key: str) -> float | None:
    raw = tags.get(METRIC_TAG_PREFIX + key)
    if raw in (None, "", "null", "None", "nan"):
        return None
    try:
        return float(raw)
    except ValueError:
        return None


def _datasets(tags: dict) -> set[str]:
    prefix = METRIC_TAG_PREFIX + "datasets."
    return {k[len(prefix) :].split(".", 1)[0] for k in tags if k.startswith(prefix)}


def compare(challenger_tags: dict, champion_tags: dict, cfg: RegisterConfig) -> list[Check]:
    """The gate's checks of a challenger against a champion, from their version tags (pure function)."""
    checks: list[Check] = []
    key = cfg.primary_metric
    new, old = _metric(challenger_tags, key), _metric(champion_tags, key)
    rule = f"> champion + {cfg.min_improvement:g}"
    if new is None:
        checks.append(Check("all", key, old, new, rule, False, "challenger has no value"))
    elif old is None:
        checks.append(Check("all", key, old, new, rule, True, "champion has no value"))
    else:
        gain = new - (old + cfg.min_improvement)
        checks.append(
            Check(
                "all",
                key,
                old,
                new,
                rule,
                gain > TIE_TOLERANCE,
                "tie: not promoted" if abs(gain) <= TIE_TOLERANCE else "",
            )
        )
    new_sets = _datasets(challenger_tags)
    for ds in sorted(_datasets(champion_tags)):
        for metric, drop in sorted(cfg.max_drop.items()):
            k = f"datasets.{ds}.{metric}"
            old, new = _metric(champion_tags, k), _metric(challenger_tags, k)
            rule = f"drop <= {drop:g}"
            if ds not in new_sets:
                checks.append(Check(ds, metric, old, None, rule, False, "dataset not evaluated by the challenger"))
            elif old is None:
                continue  # nothing to regress from
            elif new is None:
                checks.append(Check(ds, metric, old, None, rule, False, "challenger has no value"))
            else:
                checks.append(Check(ds, metric, old, new, rule, new >= old - drop - 1e-12, f"change {new - old:+.4f}"))
    if challenger_tags.get("data_manifest_sha256") != champion_tags.get("data_manifest_sha256"):
        for c in checks:
            c.note = (c.note + "; " if c.note else "") + "evaluated on different data"
    return checks


def promote(
    cfg: RegisterConfig,
    name: str | None = None,
    dry_run: bool = False,
    uri: str | None = None,
    challenger_alias: str = "challenger",
    champion_alias: str = "champion",
) -> Decision:
    """Run the gate (module docstring) and move ``champion`` when it passes.

    Args:
        cfg: the ``register`` params (model_name, primary_metric, min_improvement, max_drop).
        name: registered model name (default ``cfg.model_name``).
        dry_run: decide, but do not move the alias.
        uri: tracking URI (default ``tracking_uri()``).

    Returns:
        The :class:`Decision` (``promoted`` False when the gate refuses; nothing is raised for that).

    Raises:
        AliasNotFoundError: the model or its ``challenger`` alias does not exist.
        TrackingUnavailableError: the tracking server is unreachable.
        RegistryError: the challenger passed but its artifacts are gone (:func:`readl.registry.load.require_artifacts`).
    """
    uri = uri or tracking_uri()
    require_store(uri)  # promoting reads a registry: it never creates an empty one
    name = name or cfg.model_name
    with mlflow_session(uri) as client:
        new_v = require_alias(client, name, challenger_alias)
        from readl.registry.versions import alias_version

        old_v = alias_version(client, name, champion_alias)
        new = call(lambda: client.get_model_version(name, new_v), "read challenger")
        if old_v is None:
            decision = Decision(name, new_v, None, True, "first model: no champion yet")
        elif old_v == new_v:
            return Decision(name, new_v, old_v, True, f"version {new_v} is already {champion_alias}", dry_run=dry_run)
        else:
            old = call(lambda: client.get_model_version(name, old_v), "read champion")
            checks = compare(dict(new.tags or {}), dict(old.tags or {}), cfg)
            failed = [c for c in checks if not c.passed]
            reason = (
                f"passes: {cfg.primary_metric} and no dataset regression beyond max_drop"
                if not failed
                else "refused: " + "; ".join(f"{c.scope} {c.metric} {c.note or c.rule}" for c in failed)
            )
            decision = Decision(name, new_v, old_v, not failed, reason, checks)
        decision.dry_run = dry_run
        if decision.promoted and not dry_run:
            from readl.registry.load import require_artifacts

            require_artifacts(client, name, new_v)  # a version whose files are gone never becomes champion
            call(lambda: client.set_registered_model_alias(name, champion_alias, new_v), "set champion alias")
            now = datetime.now(UTC).isoformat(timespec="seconds")
            call(lambda: client.set_model_version_tag(name, new_v, "readl.promoted_at", now), "tag version")
            if old_v is not None:
                call(lambda: client.set_model_version_tag(name, new_v, "readl.previous_champion", old_v), "tag version")
            log.info("promote: %s version %s is now %s (was %s)", name, new_v, champion_alias, old_v)
        else:
            log.info("promote: %s version %s: %s", name, new_v, decision.reason)
        return decision


def model_version_url(name: str, version: str, uri: str | None = None) -> str | None:
    """The MLflow UI link of a version (http(s) tracking servers only)."""
    uri = uri or tracking_uri()
    if not uri.startswith(("http://", "https://")):
        return None
    return f"{uri.rstrip('/')}/#/models/{name}/versions/{version}"


def gate_table(decision: Decision):
    """The gate's checks as a ``rich`` table (scope, metric, champion, challenger, rule, ok, note)."""
    from rich.table import Table

    pct = lambda v: "n/a" if v is None else f"{v:.4f}"  # noqa: E731
    table = Table(
        "scope",
        "metric",
        "champion",
        "challenger",
        "rule",
        "ok",
        "note",
        title=f"{decision.name}: challenger v{decision.challenger} vs champion v{decision.champion_before}",
    )
    for c in decision.checks:
        table.add_row(
            c.scope,
            c.metric,
            pct(c.champion),
            pct(c.challenger),
            c.rule,
            "[green]yes[/green]" if c.passed else "[red]NO[/red]",
            c.note,
        )
    return table
