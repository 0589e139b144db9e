"""``readl register``: log the pyfunc model into the training run, register it, tag it, alias it ``challenger``.

Idempotent: the version's content fingerprint (SHA-256 of the adapter files, thresholds, metrics and params)
is a version tag (``readl.fingerprint``). Registering again with the same run and the same fingerprint reuses
the existing version (and the logged model when only the version creation was missing); nothing new is
logged. Concurrency-safe: MLflow numbers versions MAX+1 and sqlite locks under concurrent writers, so
creation is retried (jittered backoff) on "database is locked" / unique-constraint races, the created version
is read back and checked (run id + fingerprint are ours), and two concurrent registrations of the same
content keep the lower version (the duplicate is deleted). ``challenger`` always ends on the newest readl
version: each registration re-reads and re-sets it until it points at the highest version, so concurrent
registrations converge on the same alias and an older model registered late never takes it back.
"""

from __future__ import annotations

import json
import logging
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path

from readl.atomic import write_json
from readl.config import Params, RegisterConfig, load_params
from readl.digest import file_digest  # re-exported: the registry's content hashes
from readl.paths import DEFAULT_PATHS, ModelRef, Paths, resolve_model
from readl.redact import redact
from readl.registry.fingerprints import (
    FINGERPRINT_TAG,
    METRIC_TAG_PREFIX,
    flatten_metrics,
    git_commit,
    manifest_digest,
    model_fingerprint,
    params_digest,
)
from readl.registry.inputs import check_adapter, check_metrics, check_thresholds, check_train_run
from readl.registry.versions import matching_versions, readl_versions, sync_challenger
from readl.tracking import (
    RegistryError,
    artifact_errors,
    call,
    mlflow_session,
    tracking_uri,
)

__all__ = [
    "FINGERPRINT_TAG",
    "METRIC_TAG_PREFIX",
    "RegisterResult",
    "register",
    "flatten_metrics",
    "file_digest",
    "manifest_digest",
    "params_digest",
    "git_commit",
    "model_fingerprint",
    "readl_versions",
    "sync_challenger",
]

log = logging.getLogger(__name__)
MODEL_CODE = str(Path(__file__).with_name("model_code.py"))  # MLflow models-from-code (no pickle)
DEFAULT_MANIFESTS = ("data/curated/train.parquet", "data/curated/calib.parquet", "data/curated/eval.parquet")


@dataclass
class RegisterResult:
    """What ``readl register`` did (also written to ``models/registered.json``).

    name: registered model name; version: its version (string, as MLflow returns it); run_id: the run the
    model was logged into; aliases: the version's aliases after registration; model_uri: ``models:/NAME/V``;
    source: the version's source (``models:/<logged model id>``); fingerprint: content hash; reused: True when
    an existing version was reused; tracking_uri: where.
    """

    name: str
    version: str
    run_id: str
    aliases: list[str]
    model_uri: str
    source: str
    fingerprint: str
    reused: bool
    tracking_uri: str
    tags: dict[str, str] = field(default_factory=dict)


def register_config(params: Params) -> RegisterConfig:
    """The ``register`` section of ``params`` (defaults when absent)."""
    section = getattr(params, "register", None)
    return section if isinstance(section, RegisterConfig) else RegisterConfig.model_validate(section or {})


def _requirements() -> list[str]:
    reqs = []
    for dist in (
        "mlflow",
        "torch",
        "transformers",
        "peft",
        "accelerate",
        "pillow",
        "numpy",
        "pandas",
        "pydantic",
        "readl",
    ):
        try:
            reqs.append(f"{dist}=={metadata.version(dist)}")
        except metadata.PackageNotFoundError:
            reqs.append(dist)
    return reqs


# --- the run -----------------------------------------------------------------------------------------------------
def _training_run(client, train_run: Path, run_id: str | None) -> str | None:
    """The training run id of train_run.json when the tracking server knows it, else None (warning)."""
    from mlflow.exceptions import MlflowException

    if run_id is None:
        log.warning("%s not found (training skipped?): the model goes into a register run", train_run)
        return None
    try:
        call(lambda: client.get_run(run_id), f"read run {run_id}")
        return run_id
    except MlflowException as exc:
        if getattr(exc, "error_code", "") != "RESOURCE_DOES_NOT_EXIST":
            raise
    log.warning("run %s (%s) is unknown to %s: the model goes into a register run", run_id, train_run, tracking_uri())
    return None


def _new_run(client, experiment: str) -> str:
    exp = call(lambda: client.get_experiment_by_name(experiment), f"read experiment {experiment!r}")
    exp_id = exp.experiment_id if exp else call(lambda: client.create_experiment(experiment), "create experiment")
    run = call(
        lambda: client.create_run(exp_id, tags={"readl.stage": "register", "mlflow.runName": "register"}), "create run"
    )
    call(lambda: client.set_terminated(run.info.run_id), "end run")
    return run.info.run_id


def _find_logged_model(client, run_id: str, fp: str):
    import mlflow

    run = call(lambda: client.get_run(run_id), f"read run {run_id}")
    models = call(
        lambda: mlflow.search_logged_models(
            experiment_ids=[run.info.experiment_id], filter_string=f"source_run_id = '{run_id}'", output_format="list"
        ),
        "search logged models",
    )
    for m in models:
        status = str(getattr(m, "status", "READY"))
        if (m.tags or {}).get(FINGERPRINT_TAG) == fp and status.endswith("READY"):
            return m
    return None


class _PyfuncFlavor:
    """``mlflow.pyfunc`` as a ``Model.log`` flavor that accepts (and leaves to Model.log) ``validate_serving_input``."""

    @staticmethod
    def save_model(validate_serving_input: bool = True, **kwargs):
        import mlflow.pyfunc

        return mlflow.pyfunc.save_model(**kwargs)


def _log_model(run_id: str, artifacts: dict[str, str], fp: str, uri: str, eval_metrics: dict):
    import mlflow

    from readl.registry.pyfunc import MODEL_CONFIG, input_example, signature

    def log_once():
        with artifact_errors(f"log the readl model into run {run_id}", uri), mlflow.start_run(run_id=run_id):
            # = mlflow.pyfunc.log_model (which forwards all of these to Model.log) plus validate_serving_input=False
            # (as MLflow's transformers flavor passes it): with an input example MLflow would otherwise load the
            # model and generate on the example while logging (minutes and the full base weights for a 7B model);
            # serving is tested end to end instead (tests/integration/test_serve.py)
            info = mlflow.models.Model.log(
                artifact_path=None,
                name="readl",
                flavor=_PyfuncFlavor,
                python_model=MODEL_CODE,
                artifacts=artifacts,
                signature=signature(),
                input_example=input_example(),
                pip_requirements=_requirements(),
                tags={FINGERPRINT_TAG: fp},
                model_config=dict(MODEL_CONFIG),
                metadata={"readl": {"fingerprint": fp}},
                validate_serving_input=False,
                flavor_name="pyfunc.ModelFromCode",
            )
            if eval_metrics:
                mlflow.log_metrics({f"eval.{k}": v for k, v in eval_metrics.items() if v is not None})
            return info

    return call(log_once, f"log model into run {run_id}", uri, attempts=3)


# --- register ----------------------------------------------------------------------------------------------------
def register(
    params_file: str | Path = "params.yaml",
    adapter: str | Path | None = DEFAULT_PATHS.adapter,
    thresholds: str | Path = DEFAULT_PATHS.thresholds,
    metrics: str | Path = "metrics.json",
    train_run: str | Path = DEFAULT_PATHS.train_run,
    manifests: Sequence[str | Path] = DEFAULT_MANIFESTS,
    out: str | Path | None = DEFAULT_PATHS.registered,
    name: str | None = None,
    alias: str = "challenger",
    uri: str | None = None,
    model: ModelRef | None = None,
    params: Params | None = None,
) -> RegisterResult:
    """Log the readl pyfunc model into the training run and register it as a new version aliased ``alias``.

    Args:
        params_file: params.yaml (its ``register.model_name`` names the model; the whole file is logged
            as the ``params`` artifact; all sections but ``register`` are hashed into ``params_sha256``).
        adapter: PEFT LoRA folder; missing or ``None`` registers the base model alone (warning).
        thresholds: thresholds.json from ``readl calibrate`` (required).
        metrics: metrics.json from ``readl evaluate`` (required; its numeric leaves become the version tags
            ``metrics.<dotted key>``, e.g. ``metrics.image.AUROC``, ``metrics.datasets.mvtec_ad.pixel.AUROC``).
        train_run: JSON with the training ``run_id``; missing / unknown to the server -> a new run (or the run
            of an existing version with the same content).
        manifests: curated manifests hashed into ``data_manifest_sha256``.
        out: where to write the :class:`RegisterResult` JSON (``None``: do not write).
        name: registered model name (default ``register.model_name``).
        alias: alias set on the newest readl version (see the module docstring).
        uri: tracking URI (default :func:`readl.tracking.tracking_uri`).
        model: the stage's base model (:func:`readl.paths.resolve_model`; default: resolved for the folder of
            ``train_run``, i.e. ``models/``); a warm-started one (``models/warmup``) is logged as the
            ``base_model`` artifact.
        params: ``params_file`` already loaded and validated (the stage's; default: loaded here).

    Returns:
        The :class:`RegisterResult`.

    Raises:
        FileNotFoundError: thresholds or metrics file missing (the message says which stage to run).
        ValueError: an input is incomplete (:mod:`readl.registry.inputs`); checked before anything is written.
        TrackingUnavailableError: the tracking server is unreachable (after retries).
        ArtifactStoreError: S3 / the artifact proxy failed (after retries of transient errors).
        RegistryError: the version could not be created consistently.
    """
    uri = uri or tracking_uri()
    cfg: Params = params if params is not None else load_params(params_file)
    name = name or register_config(cfg).model_name
    thresholds, metrics, train_run = Path(thresholds), Path(metrics), Path(train_run)
    # every input is read and checked before anything is written to the registry (readl.registry.inputs)
    check_thresholds(thresholds)
    metrics_json = check_metrics(metrics, register_config(cfg).primary_metric)
    eval_metrics = flatten_metrics(metrics_json)
    reference_source = (metrics_json.get("reasoning") or {}).get("reference_source")  # what ROUGE-L / SBERT mean
    train_run_id = check_train_run(train_run)
    adapter_dir = check_adapter(Path(adapter) if adapter is not None else None)
    if adapter is not None and adapter_dir is None:
        log.warning("no adapter at %s: registering the base model %r without an adapter", adapter, cfg.model.base)
    model = model or resolve_model(cfg, Paths(Path(train_run).parent))
    base = model.base
    base_dir = Path(base) if model.warm_started else None  # the warm-started model travels with the version
    params_json = cfg.model_dump(mode="json")
    model_params = {k: v for k, v in params_json.items() if k != "register"}  # what shapes the model
    fp = model_fingerprint(adapter_dir, thresholds, metrics, model_params, base_dir)
    tags = {
        FINGERPRINT_TAG: fp,
        "data_manifest_sha256": manifest_digest(manifests),
        "params_sha256": params_digest(model_params),
        "git_commit": git_commit(Path(params_file).resolve().parent),
        "base_model": cfg.model.base if base_dir is None else f"{cfg.model.base} + warmup",
        "adapter": "yes" if adapter_dir else "none",
        **{f"{METRIC_TAG_PREFIX}{k}": "null" if v is None else repr(v) for k, v in eval_metrics.items()},
    }
    if reference_source:
        tags["reasoning_reference_source"] = json.dumps(reference_source, sort_keys=True)

    with mlflow_session(uri) as client:
        call(lambda: _ensure_registered_model(client, name), f"create registered model {name!r}", uri)
        run_id = _training_run(client, train_run, train_run_id)
        if run_id is None:  # no training run: reuse a version of the same content, else log into a new run
            same = [v for v in readl_versions(client, name) if v.tags.get(FINGERPRINT_TAG) == fp]
            run_id = same[0].run_id if same else _new_run(client, cfg.train.experiment)
        tags["train_run_id"] = run_id

        existing = matching_versions(client, name, run_id, fp)
        reused = bool(existing)
        if existing:
            mv = existing[0]
            log.info(
                "register: version %s of %r already holds this model (run %s); reusing it", mv.version, name, run_id
            )
        else:
            logged = _find_logged_model(client, run_id, fp)
            if logged is None:
                with tempfile.TemporaryDirectory() as tmp:
                    pj = Path(tmp) / "params.json"
                    pj.write_text(json.dumps(params_json, indent=2, sort_keys=True))
                    artifacts = {"params": str(pj), "thresholds": str(thresholds), "metrics": str(metrics)}
                    if adapter_dir:
                        artifacts["adapter"] = str(adapter_dir)
                    if base_dir is not None:
                        artifacts["base_model"] = str(base_dir)
                    logged = _log_model(run_id, artifacts, fp, uri, eval_metrics)
            source = f"models:/{logged.model_id}"
            mv = _create_version(client, name, source, run_id, fp, tags, logged.model_id, uri)
            reused = mv.source != source  # a concurrent registration of the same content won
        sync_challenger(client, name, alias)
        mv = call(lambda: client.get_model_version(name, mv.version), "read version")
        result = RegisterResult(
            name=name,
            version=str(mv.version),
            run_id=run_id,
            aliases=sorted(mv.aliases or []),
            model_uri=f"models:/{name}/{mv.version}",
            source=mv.source,
            fingerprint=fp,
            reused=reused,
            tracking_uri=redact(uri),
            tags=dict(mv.tags or {}),
        )
        if out is not None:
            record = asdict(result)
            record.pop("tags")
            write_json(out, record)
        log.info(
            "register: %s version %s (run %s)%s, aliases %s",
            name,
            result.version,
            run_id,
            " reused" if reused else "",
            result.aliases,
        )
        return result


def _ensure_registered_model(client, name: str) -> None:
    from mlflow.exceptions import MlflowException

    try:
        client.create_registered_model(name, description="readl: Qwen2.5-VL + LoRA anomaly detection with ReAL maps")
    except MlflowException as exc:
        if getattr(exc, "error_code", "") not in ("RESOURCE_ALREADY_EXISTS", "ALREADY_EXISTS"):
            raise


def _create_version(
    client, name: str, source: str, run_id: str, fp: str, tags: dict, model_id: str, uri: str, attempts: int = 8
):
    """Create the version (retried on races), verify it is ours, and drop a same-content duplicate."""
    from mlflow.exceptions import MlflowException

    from readl.tracking import is_transient, with_retries

    description = (
        f"readl model {tags.get('base_model')} + adapter {tags.get('adapter')}; run {run_id}; "
        f"image AUROC {tags.get('metrics.image.AUROC', 'n/a')}, pixel AUROC {tags.get('metrics.pixel.AUROC', 'n/a')}"
    )

    def attempt():
        found = matching_versions(client, name, run_id, fp)  # an earlier attempt may have landed before failing
        if found:
            return found[0]
        mv = client.create_model_version(
            name, source, run_id=run_id, tags=tags, description=description, model_id=model_id
        )
        got = client.get_model_version(name, mv.version)
        if got.run_id != run_id or (got.tags or {}).get(FINGERPRINT_TAG) != fp:
            raise _Race(f"version {mv.version} of {name!r} does not hold run {run_id} (race); retrying")
        return got

    def retry_if(exc):
        return isinstance(exc, _Race) or is_transient(exc)

    try:
        mv = with_retries(attempt, f"create a version of {name!r}", attempts=attempts, retry_if=retry_if)
    except _Race as exc:
        raise RegistryError(str(exc)) from exc
    except MlflowException as exc:
        raise RegistryError(f"could not create a version of {name!r} at {uri}: {exc}") from exc
    dups = matching_versions(client, name, run_id, fp)
    if dups and dups[0].version != mv.version:  # a concurrent twin registered the same content first: keep it
        log.warning(
            "register: version %s duplicates version %s (same run and content); deleting %s",
            mv.version,
            dups[0].version,
            mv.version,
        )
        try:
            client.delete_model_version(name, mv.version)
        except MlflowException as exc:  # the twin may delete it too
            if getattr(exc, "error_code", "") != "RESOURCE_DOES_NOT_EXIST":
                raise
        try:  # and the logged model it pointed at (best effort: it is only an orphan otherwise)
            client.delete_logged_model(model_id)
        except MlflowException as exc:
            log.debug("could not delete logged model %s: %s", model_id, exc)
        return dups[0]
    return mv


class _Race(RuntimeError):
    pass
