"""The int8 recipes of the export side by side on one fp32 graph, in one run: posts/s at batch
1 and 32 (length-sorted), argmax agreement with fp32 per task, the share of labels that change
between a post scored alone and in a batch, and the file size. The export gate picks among the
same recipes on validation posts; this shows what each costs and buys on this CPU.

    .venv/bin/caretriage export --checkpoint artifacts/train/<run> --precision fp32 \\
        --out artifacts/bundle-fp32 --allow-export-failures --no-register
    .venv/bin/python benchmarks/quant_recipes.py --fp32-bundle artifacts/bundle-fp32
"""

from __future__ import annotations

import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
if __package__ in (None, ""):  # run as a script: import from the repo root, not benchmarks/
    sys.path[0] = str(REPO_ROOT)

import argparse  # noqa: E402
import json  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

from tqdm.auto import tqdm  # noqa: E402

from benchmarks import report  # noqa: E402
from benchmarks.workload import load_workload  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from training.config import default_data_dir
    from training.export.recipes import RECIPES

    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--fp32-bundle", type=Path, required=True, help="a bundle with an fp32 graph")
    p.add_argument("--recipes", nargs="+", default=list(RECIPES), choices=list(RECIPES))
    p.add_argument("--data-dir", type=Path, default=default_data_dir())
    p.add_argument("--posts", type=int, default=1449, help="posts scored per variant")
    p.add_argument("--posts-b1", type=int, default=300, help="posts timed one at a time")
    p.add_argument("--threads", type=int, default=0, help="ONNX Runtime intra-op threads")
    p.add_argument(
        "--out", type=Path, default=REPO_ROOT / "benchmarks" / "results" / "quant_recipes.json"
    )
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    from transformers import PreTrainedTokenizerFast

    from features.bundle import read_bundle
    from training.export.gate import agreement, batch_flip_rate
    from training.export.recipes import apply_recipe
    from training.export.runtime import feeds, ort_predictor, session

    args = parse_args(argv)
    bundle = read_bundle(args.fp32_bundle)
    meta, schema = bundle.meta, bundle.schema_
    tok = PreTrainedTokenizerFast(tokenizer_file=str(bundle.tokenizer_path), pad_token="[PAD]")
    texts = load_workload(args.data_dir, args.posts, normalizer=meta.normalizer).texts
    b32, _ = feeds(tok, texts, meta.max_length, 32)
    b1, _ = feeds(tok, texts[: args.posts_b1], meta.max_length, 1)

    def rate(sess, batches, rounds: int) -> float:
        for feed in batches[:3]:
            sess.run(None, feed)
        t0, n = time.perf_counter(), 0
        for _ in range(rounds):
            for feed in batches:
                sess.run(None, feed)
                n += len(feed["input_ids"])
        return n / (time.perf_counter() - t0)

    rows, out = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        graphs = {"fp32": bundle.onnx_path}
        for name in tqdm(args.recipes, desc="building recipes", unit="recipe"):
            # Calibrated recipes calibrate on the workload's own posts here (the export uses
            # validation posts): fine for cost, optimistic for agreement.
            graphs[name], _ = apply_recipe(bundle.onnx_path, Path(tmp) / f"{name}.onnx", name, b32)
        ref = None
        for name, path in tqdm(graphs.items(), desc="measuring", unit="graph"):
            sess = session(path, threads=args.threads)
            predict = ort_predictor(sess, tok, schema, meta.max_length)
            logits = predict(texts)
            ref = ref or logits
            res = {
                "b1_posts_per_s": round(rate(sess, b1, 1), 1),
                "b32_posts_per_s": round(rate(sess, b32, 2), 1),
                "agreement": agreement(ref, logits),
                "batch_flip_rate": batch_flip_rate(predict, texts[:200], schema),
                "mb": round(path.stat().st_size / 2**20, 2),
            }
            out[name] = res
            rows.append(
                [name, res["b1_posts_per_s"], res["b32_posts_per_s"]]
                + [res["agreement"][t] for t in schema.names]
                + [res["batch_flip_rate"], res["mb"]]
            )
    base = out["fp32"]["b32_posts_per_s"]
    for r in rows:
        r.insert(3, round(r[2] / base, 2))
    headers = ["graph", "b1 posts/s", "b32 posts/s", "b32 × fp32"]
    headers += [f"agree {t}" for t in schema.names] + ["batch flips %", "MB"]
    print(report.table(headers, rows))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"bundle": str(args.fp32_bundle), "results": out}, indent=2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
