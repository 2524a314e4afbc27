"""python -m train_job.models list [--model-store models]: the store, like `bentoml models list`."""

from __future__ import annotations

import argparse
import sys

from model_store import list_versions


def format_table(rows: list[dict]) -> str:
    """TEST F1 / TEST ACC: macro over attributes on the test split, "tuned/single": with each
    attribute's threshold tuned on validation / with the single threshold ("-": an artifact
    exported before tuning existed)."""
    header = (
        "NAME", "VERSION", "BACKBONE", "INPUT", "VAL AUROC", "TEST AUROC",
        "TEST F1 tuned/single", "TEST ACC tuned/single", "SIZE", "CREATED",
    )  # fmt: skip
    lines = [header]
    for r in rows:
        size = f"{r['size_bytes'] / 1e6:.1f} MB"
        tag = f"{r['version']} (latest)" if r["latest"] else r["version"]
        inp = "x".join(map(str, r["input_size"])) if r["input_size"] else "-"
        auc = lambda v: "-" if v is None else f"{v:.4f}"  # noqa: E731
        lines.append(
            (
                r["name"],
                tag,
                r["backbone"] or "-",
                inp,
                auc(r["val_auroc"]),
                auc(r["test_auroc"]),
                _pair(r.get("test_f1_tuned"), r.get("test_f1_single")),
                _pair(r.get("test_accuracy_tuned"), r.get("test_accuracy_single")),
                size,
                (r["created_at"] or "-")[:19],
            )
        )
    widths = [max(len(str(line[i])) for line in lines) for i in range(len(header))]
    return "\n".join(
        "  ".join(str(c).ljust(w) for c, w in zip(line, widths)).rstrip() for line in lines
    )


def _pair(tuned: float | None, single: float | None) -> str:
    if tuned is None and single is None:
        return "-"
    fmt = lambda v: "-" if v is None else f"{v:.4f}"  # noqa: E731
    return f"{fmt(tuned)}/{fmt(single)}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m train_job.models")
    sub = parser.add_subparsers(dest="command", required=True)
    list_cmd = sub.add_parser("list", help="list the models in the store")
    list_cmd.add_argument("--model-store", default="models")
    args = parser.parse_args(argv)
    rows = list_versions(args.model_store)
    if not rows:
        print(f"no models in {args.model_store}")
        return 0
    print(format_table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
