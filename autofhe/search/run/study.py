"""Create or resume a study on a storage URL, run workers, keep the Pareto front.

A study is an Optuna multi-objective study (metric max, predicted FHE latency min) plus
autofhe's tables (pareto.py) holding its dataset and its front models, so any worker needs
only the storage URL and the study name. Workers are plain processes asking the study for
trials; a helper process of each worker beats for its trial and reaps (heartbeat.py): a
killed worker's trial is failed and re-queued after the grace period, a live one never is.
"""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import optuna

from autofhe.data import Dataset, check_Xy, split_dataset
from autofhe.errors import AutofheError, DataError, ParameterError, StorageError
from autofhe.search import record
from autofhe.search.front.notes import dominating, publish_front, publish_trial
from autofhe.search.front.pareto import pareto_front, study_front
from autofhe.search.front.refine import maybe_refine
from autofhe.search.plan.probe import make_plan, project
from autofhe.search.plan.space import SEED_CONFIG
from autofhe.search.plan.spec import Spec
from autofhe.search.price.feasibility import (
    LIMITED,
    constraint_attrs,
    is_feasible,
    named_constraints,
    price_cap,
    relimit,
)
from autofhe.search.record import StudyRecord, TrialRecord, record_study
from autofhe.search.report import front_advice
from autofhe.search.run.heartbeat import Heartbeat
from autofhe.search.store.engine import make_storage
from autofhe.search.store.locate import (
    DEFAULT_STORAGE,
    STORAGE_ENV,
    artifact_dir,
    artifact_store,
    find_study,
    resolve_storage,
    sqlite_path,
)
from autofhe.search.store.tables import ParetoStore
from autofhe.search.trial.rows import METRICS, Rows

if TYPE_CHECKING:  # torch: the `search` process that only opens the study never loads it
    from autofhe.search.trial.objective import SearchContext

__all__ = [
    "DEFAULT_STORAGE",
    "STORAGE_ENV",
    "SearchSession",
    "artifact_dir",
    "artifact_store",
    "check_search_inputs",
    "default_study_name",
    "open_study",
    "resolve_storage",
]

OBJECTIVE_NAMES = ["fhe_latency_s"]
#: Validation predictions recorded per front trial, for checking exported models.
RECORDED_PREDICTIONS = 16


def default_study_name(ds: Dataset, metric: str) -> str:
    return f"{ds.name}-{metric}"


def _sampler(spec_sampler: str, seed: int | None):
    if spec_sampler == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed)
    return optuna.samplers.TPESampler(multivariate=True, seed=seed, n_startup_trials=8)


def check_search_inputs(
    ds: Dataset, spec: Spec, seed: int = 0, url: str | None = None, name: str | None = None
) -> str:
    """Validate metric / task / splits (no database write); sets and returns the metric.

    ``url`` and ``name``: where the search will run (``name`` None: the default name). A
    resumed study whose space and fixed values are the spec's skips the dry run: they trained
    when it was created.
    """
    metric = spec.metric or ("accuracy" if ds.task == "classification" else "r2")
    if metric not in METRICS:
        raise ParameterError(f"unknown metric {metric!r}; use one of {', '.join(METRICS)}.")
    if METRICS[metric][0] != ds.task:
        raise ParameterError(
            f"metric {metric!r} is for {METRICS[metric][0]}, but the task is {ds.task}; "
            "pick a matching --metric or pass --task."
        )
    spec.metric = metric
    split_dataset(ds, seed)  # too few rows fail here, before any write
    if url is None or not _created_with(url, name or default_study_name(ds, metric), spec):
        _dry_run(ds, spec, seed)
    return metric


def _created_with(url: str, name: str, spec: Spec) -> bool:
    """True when study ``name`` on ``url`` was created with ``spec``'s space and fixed values.
    Reads only: a missing SQLite file is not created, an unreadable database says False (the
    search then reports what is wrong with it)."""
    import json

    db = sqlite_path(url)
    if db is not None and not db.exists():
        return False
    try:
        stored = ParetoStore(url).study_spec(name)
    except AutofheError:
        return False
    wanted = json.loads(json.dumps(spec.to_json()))  # as stored
    return stored is not None and all(stored.get(k) == wanted[k] for k in ("space", "fixed"))


def _dry_run(ds: Dataset, spec: Spec, seed: int) -> None:
    """Draw one configuration from the space and train it for one epoch on a few rows.

    A spec whose every trial would crash (a [fixed] value of the wrong kind, ``step = 0``)
    is refused here, before anything is written, instead of filling a study with FAIL trials.
    """
    if not spec.fixed and spec.space == Spec().space:
        return  # the default space (its trials have tests): no torch import in this process
    from autofhe.errors import AccumulatorBudgetError
    from autofhe.nn.estimators import NeuralNetClassifier, NeuralNetRegressor
    from autofhe.search.plan.space import suggest, to_estimator_params

    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # no "new study created" line
    try:
        trial = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed)).ask()
    finally:
        optuna.logging.set_verbosity(verbosity)
    try:
        params = suggest(trial, spec.space)
    except (ValueError, TypeError) as exc:
        raise ParameterError(f"search space: {exc}; fix the [space] of the spec.") from None
    classification = ds.task == "classification"
    if classification:  # a few rows of every class
        rows = np.concatenate([np.flatnonzero(ds.y == c)[:4] for c in np.unique(ds.y)])
    else:
        rows = np.arange(min(len(ds.y), 16))
    cls = NeuralNetClassifier if classification else NeuralNetRegressor
    merged = to_estimator_params({**spec.fixed, **params, "verbose": 0})
    epochs = merged.get("max_epochs", 1)
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise ParameterError(
            f"the spec's max_epochs = {epochs!r} cannot be trained; pass a positive integer."
        )
    merged["max_epochs"] = 1  # one epoch shows that the values work
    try:
        cls(random_state=seed, **merged).fit(ds.X[rows], ds.y[rows])
    except AccumulatorBudgetError:
        pass  # this drawn configuration is infeasible: the search prices it, the spec is fine
    except Exception as exc:
        first = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise ParameterError(
            f"the spec's configuration {params} with [fixed] {spec.fixed} cannot be trained "
            f"({type(exc).__name__}: {first}); fix the [fixed] / [space] values."
        ) from None


def open_study(
    ds: Dataset,
    spec: Spec,
    url: str,
    name: str | None,
    seed: int = 0,
    say: Callable[[str], None] | None = None,
    checked: bool = False,
) -> tuple[optuna.Study, ParetoStore, str]:
    """Create the study (registering its data) or resume it; refuse different data, and a
    study autofhe did not make.

    Everything the user passed is validated before the database is touched (``checked``: the
    caller ran :func:`check_search_inputs` on them already, the dry run included). ``say``
    receives a line before and after the probe of a new study's data (seconds to minutes on
    wide data), and the line that says a resume changed the study's limits.

    A resume may change the limits named in ``spec.given`` (see :data:`LIMITS`); the others
    keep the study's own. Every other setting must be the study's.
    """
    metric = spec.metric if checked and spec.metric else check_search_inputs(ds, spec, seed)
    admitted: list[dict] = []
    rejudged: set[int] = set()
    name = name or default_study_name(ds, metric)
    # Ours: registered in autofhe's table (the first write of a new study, before Optuna's
    # study exists). Anything else of that name is refused before any write.
    info = ParetoStore(url).study_info(name)
    if info is None:
        find_study(url, name)
    store = ParetoStore(url, create=True)
    if info is not None and info["fingerprint"] != ds.fingerprint:
        raise DataError(
            f"study {name!r} was created with different data (fingerprint "
            f"{info['fingerprint'][:12]}, source {info['source']}); this data has "
            f"{ds.fingerprint[:12]}. Use another --study name, or the original data."
        )
    wanted = {**spec.to_json(), "split_seed": seed}
    if info is not None:
        stored = info["spec"]
        defaults = Spec().to_json()  # settings added since the study was created
        changed = sorted(
            k
            for k in wanted
            if k not in ("split_seed", *LIMITS) and stored.get(k, defaults.get(k)) != wanted[k]
        )
        if changed:
            raise ParameterError(
                f"study {name!r} was created with other settings ({', '.join(changed)} differ); "
                "resume it with the original --spec / --metric / --folds (the limits "
                "--max-latency and --max-key-size may change), or start a new study with "
                "--study NAME."
            )
        for k in LIMITS:  # a limit the user did not set keeps the study's own
            if k not in spec.given:
                wanted[k] = stored.get(k, defaults[k])
        if any(stored.get(k, defaults[k]) != wanted[k] for k in LIMITS):
            admitted, rejudged = _change_limits(url, name, store, stored, wanted, say)
    if info is None:
        if say:
            rows, cols = ds.X.shape
            say(f"planning: a float linear model and MLP on {rows} rows x {cols} features ...")
        plan = make_plan(
            ds.task, metric, split_dataset(ds, seed), spec.space, spec.fixed, spec.folds
        )
        if say:
            p = plan["probe"]
            say(
                f"planning: float linear {metric} {p['float_linear']:.4f}, float MLP "
                f"{p['float_mlp']:.4f} (in {p['probe_s']:.1f} s); first trials: "
                + ("hidden-layer networks" if plan["nonlinear"] else "quantized linear models")
            )
        if not store.register_study(name, ds, metric, wanted):
            # another first run registered it between our look and our write: join it
            return open_study(ds, spec, url, name, seed, say)
    study = optuna.create_study(
        study_name=name,
        storage=make_storage(url),
        directions=["maximize", "minimize"],
        sampler=_sampler(spec.sampler, seed),
        load_if_exists=True,
    )
    if info is None:
        study.set_metric_names([metric, *OBJECTIVE_NAMES])
        record_study(
            study,
            StudyRecord(
                autofhe_fingerprint=ds.fingerprint,
                autofhe_task=ds.task,
                autofhe_source=ds.source,
                autofhe_plan=plan,
            ),
        )
        space = {**spec.space, **plan["space"]}
        for params in plan["seeds"]:
            study.enqueue_trial(project(params, space))
    for params in admitted:  # configurations the old limits kept from training
        study.enqueue_trial(params)
    if rejudged:  # the notes people read say what the new limits make of these trials
        trials = study.get_trials(deepcopy=False)
        front = pareto_front(trials)
        for t in trials:
            if t.number in rejudged:
                publish_trial(study, t, front)
        limits = (wanted["max_latency"], wanted["max_key_size"])
        publish_front(study, front, empty_text="" if front else front_advice(trials, *limits))
    return study, store, name


#: the settings a resume may change: feasibility is re-judged from what each trial stored
LIMITS = ("max_latency", "max_key_size")


def _limits_text(spec: dict) -> str:
    latency = "none" if spec.get("max_latency") is None else f"{spec['max_latency']:g} s"
    keys = spec.get("max_key_size", Spec().max_key_size)
    return f"--max-latency {latency}, --max-key-size {keys / 1e6:g} MB"


#: configurations the old limits rejected before training that a relaxed limit queues again
READMITTED = 3


def _change_limits(
    url, name, store, stored: dict, wanted: dict, say
) -> tuple[list[dict], set[int]]:
    """Resume with other limits: the study's settings take them (its ``limits_history`` keeps
    the ones before, with the number of trials they held for), and every complete trial's
    feasibility is re-judged from its stored latency and key size. Returns the parameters of
    the cheapest configurations the old limits rejected before training and the new ones
    admit (at most READMITTED, none tried or queued already), for the caller to queue, and
    the numbers of the trials whose feasibility changed."""
    storage = make_storage(url)
    study_id = storage.get_study_id_from_name(name)
    trials = storage.get_all_trials(study_id, deepcopy=False)
    complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    before = sum(is_feasible(t) for t in complete)
    now, rejudged = 0, set()
    for t in complete:
        constraints, reason = relimit(t, wanted["max_latency"], wanted["max_key_size"])
        feasible = all(v <= 0 for v in constraints.values())
        now += feasible
        if constraints != named_constraints(t):  # one transaction: both or neither
            system = constraint_attrs(constraints)
            record.write_finished(
                storage, t._trial_id, system=system, feasible=feasible, reason=reason
            )
            rejudged.add(t.number)
    cap = price_cap(wanted["max_latency"])
    taken, rejected = [], []  # trained or queued already (not queued again); rejected by a limit
    for t in trials:
        r = TrialRecord.of(t)
        if t.state == optuna.trial.TrialState.WAITING or not r.rejected_before_training:
            taken.append(t.params)
        elif r.reason.split(":", 1)[0] in LIMITED:
            latency, keys = r.priced_latency_s, r.priced_key_bytes
            if latency is not None and latency <= cap and (keys or 0) <= wanted["max_key_size"]:
                rejected.append((latency, t.number, t.params))
    admitted: list[dict] = []
    for *_, params in sorted(rejected, key=lambda item: item[:2]):
        if len(admitted) < READMITTED and params not in taken and params not in admitted:
            admitted.append(params)
    history = [
        *stored.get("limits_history", []),
        {**{k: stored.get(k, Spec().to_json()[k]) for k in LIMITS}, "trials": len(trials)},
    ]
    store.set_spec(name, {**stored, **{k: wanted[k] for k in LIMITS}, "limits_history": history})
    if say:
        say(
            f"limits: {_limits_text(stored)} -> {_limits_text(wanted)}; "
            f"{len(complete)} complete trials judged again: {now} feasible (were {before})"
            + (f"; {len(admitted)} rejected configurations queued again" if admitted else "")
        )
    return admitted, rejudged


def seed_params(space: dict) -> dict:
    """The seed's documented configuration as far as ``space`` can hold it."""
    return project(SEED_CONFIG, space)


@dataclass
class SearchSession:
    """A study joined by this process: context built from the stored data and spec."""

    url: str
    name: str
    seed: int = 0

    def _info(self, store: ParetoStore) -> dict:
        """The study's row (spec, dataset): read once per worker, it holds the whole dataset."""
        info = store.study_info(self.name)
        if info is None:
            raise ParameterError(
                f"study {self.name!r} is not an autofhe study in {self.url}; list them with "
                "`autofhe studies`."
            )
        return info

    def context(self, store: ParetoStore, cost_model, plan: dict | None = None) -> SearchContext:
        return self._context(self._info(store), cost_model, plan)

    def _context(self, info: dict, cost_model, plan: dict | None = None) -> SearchContext:
        """The trial context; ``plan``: the study's data-aware plan (plan.py), if it has one."""
        from autofhe.search.trial.objective import SearchContext

        plan = plan or {}
        X, y = ParetoStore.decode_data(info)
        X, y = check_Xy(X, y, classification=info["task"] == "classification")
        ds = Dataset(
            X=X,
            y=y,
            name=self.name,
            task=info["task"],
            fingerprint=info["fingerprint"],
            source=info["source"],
        )
        # One split per study, whatever the worker: scores compare, test rows never train.
        spec = info["spec"]
        parts = split_dataset(ds, spec.get("split_seed", 0))
        folds = plan.get("folds", spec.get("folds") or 1)
        return SearchContext(
            Rows(info["task"], info["metric"], *parts, folds=folds),
            space={**spec["space"], **plan.get("space", {})},
            cost_model=cost_model,
            max_latency=spec["max_latency"],
            max_key_size=spec["max_key_size"],
            seed=self.seed,
            fixed={**plan.get("fixed", {}), **spec["fixed"]},
            linear=plan.get("linear", {}),
            front_hook=self._front_hook(),
        )

    def _front_hook(self) -> Callable:
        url, name = self.url, self.name

        def on_front(trial, model, X_valid, predicted: float) -> None:
            """A trial entering the front: measure its latency, store its compiled model.

            Slow models are measured on one sample only (measure_front_model): key
            generation plus three samples of a 20 s model would stall the search.
            """
            from autofhe.errors import BundleError, ResourceError
            from autofhe.fhe.bundle import save_archive
            from autofhe.search.front.remeasure import DURING_SEARCH, measure_front_model
            from autofhe.search.trial.objective import set_phase

            # what the exported model must reproduce (clear program == encrypted circuit)
            set_phase(trial, "measuring its latency under encryption")
            head = model.predict(X_valid[:RECORDED_PREDICTIONS])
            record.write(trial, valid_predictions_head=np.asarray(head).tolist())
            try:
                # the machine's other workers pause at their next checkpoint (quiet.py)
                fields = measure_front_model(model.compiled_model, X_valid, predicted)
                record.write(trial, **fields, measured_when=DURING_SEARCH)
            except ResourceError as exc:
                record.write(trial, measure_error=str(exc))
            store = artifact_store(url, write=True)
            with tempfile.TemporaryDirectory() as tmp:
                provenance = {"study": name, "trial": trial.number}
                try:
                    archive = save_archive(
                        model.compiled_model, Path(tmp) / f"trial-{trial.number}.zip", provenance
                    )
                except BundleError as exc:
                    # the trial's values stand; only its model cannot ship (and a live
                    # trial must not FAIL for it)
                    record.write(trial, store_error=str(exc).splitlines()[0])
                    return
                artifact_id = optuna.artifacts.upload_artifact(
                    artifact_store=store,
                    file_path=str(archive),
                    study_or_trial=trial,
                    mimetype="application/zip",
                )
            record.write(trial, artifact_id=artifact_id)

        return on_front

    def run(self, n_trials: int | None, timeout: float | None, cost_model) -> int:
        """Run trials in this process until ``n_trials`` more are done or ``timeout`` passes.

        ``cost_model`` None: this machine's cached latency model (calibrated if missing).
        Returns the number of trials this process ran.
        """
        if cost_model is None:
            from autofhe.fhe.latency import load_cost_model

            cost_model = load_cost_model()
        store = ParetoStore(self.url, create=True)
        info = self._info(store)
        storage = make_storage(self.url)
        study = optuna.load_study(
            study_name=self.name,
            storage=storage,
            sampler=_sampler(info["spec"].get("sampler", "tpe"), self.seed + os.getpid()),
        )
        ctx = self._context(info, cost_model, StudyRecord.of(study).autofhe_plan)

        # feasible trial -> what its note says of the front: the front model that dominates
        # it, or None when it is on the front (this worker's notes; others' are rewritten once)
        told: dict[int, int | None] = {}

        def after_trial(trial: optuna.trial.FrozenTrial) -> None:
            trials = study.get_trials(deepcopy=False)
            front = study_front(study, trials)
            n_complete = sum(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
            # what optuna-dashboard shows first, for people: the trial's note, and the notes
            # of feasible trials whose place changed (pushed off the front, or dominated by
            # another front model now)
            publish_trial(study, trial, front)
            on_front = {t.number for t in front}
            for t in trials:
                if t.state != optuna.trial.TrialState.COMPLETE or not is_feasible(t):
                    continue
                better = None if t.number in on_front else dominating(t, front)
                now = None if better is None else better.number
                if told.get(t.number, -1) != now:
                    if t.number != trial.number:
                        publish_trial(study, t, front)
                    told[t.number] = now
            try:
                store.save_front(self.name, front, n_complete)
                empty = "" if front else front_advice(trials, ctx.max_latency, ctx.max_key_size)
                publish_front(study, front, n_complete, empty)
            except StorageError as exc:  # the next trial's snapshot catches up
                print(f"autofhe: warning: front snapshot not saved: {exc}", file=sys.stderr)

        def before_ask() -> None:
            try:
                trials = study.get_trials(deepcopy=False)
                maybe_refine(study, trials, ctx.space, ctx.seed)
            except Exception as exc:  # a refinement is a bonus: never a worker's end
                print(f"autofhe: warning: no refinement enqueued: {exc}", file=sys.stderr)

        from autofhe.search.run.loop import optimize

        beat = Heartbeat(self.url, self.name, storage)
        try:
            return optimize(study, storage, ctx, n_trials, timeout, beat, after_trial, before_ask)
        finally:
            beat.close()


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path
