"""``caretriage``: one thin command line over the library. Each subcommand imports only what
it needs, so ``serve`` runs on the light serving install (no torch)."""

from __future__ import annotations

import argparse
import json
import logging
import secrets
import sys
from pathlib import Path


def _train_config(args):
    from training.config import TrainConfig

    data = {}
    if args.config:
        text = Path(args.config).read_text()
        if args.config.endswith((".yaml", ".yml")):
            import yaml

            data = yaml.safe_load(text)
        else:
            data = json.loads(text)
    cfg = TrainConfig.model_validate(data)
    for key in ("epochs", "seed", "name", "tracking_uri", "threads"):
        v = getattr(args, key, None)
        if v is not None:
            setattr(cfg, key, v)
    if getattr(args, "tasks", None):
        cfg.data.tasks = args.tasks
    if getattr(args, "data_dir", None):
        cfg.data.data_dir = Path(args.data_dir)
    if getattr(args, "no_register", False):
        cfg.register_model = False
    if getattr(args, "teacher", None):
        from training.config import DistillConfig

        kept = cfg.distill.model_dump(exclude={"teachers"}) if cfg.distill else {}
        cfg.distill = DistillConfig(teachers=[Path(p) for p in args.teacher], **kept)
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
    from training.pipeline import run

    cfg = _train_config(args)
    res = run(cfg, Path(args.bundle_dir) if args.bundle_dir else None, export=not args.no_export)
    print(
        json.dumps(
            {
                "run_id": res.run_id,
                "seconds": round(res.seconds),
                "metrics": res.metrics,
                "bundle": str(res.bundle),
                "registry": res.registry,
            },
            indent=2,
        )
    )
    return 0


def cmd_export(args) -> int:
    from training.export import RECIPES
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

    def train_opts(q):
        q.add_argument("--config", help="a TrainConfig as JSON or YAML")
        q.add_argument("--epochs", type=int)
        q.add_argument("--seed", type=int)
        q.add_argument(
            "--threads", type=int, help="torch threads for this job (default: all cores)"
        )
        q.add_argument("--name")
        q.add_argument("--tasks", nargs="+", choices=["topic", "sentiment", "actionability"])
        q.add_argument("--data-dir")
        q.add_argument("--tracking-uri")

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
    t.set_defaults(fn=cmd_train)

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

    k = sub.add_parser("keygen", help="print a new random API key")
    k.set_defaults(fn=cmd_keygen)
    return p


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    args = parser().parse_args(argv)
    return args.fn(args)


if __name__ == "__main__":
    sys.exit(main())
