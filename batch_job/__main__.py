"""python -m batch_job --model-uri URI --input DIR|LIST|URI --output DIR [...]"""

from __future__ import annotations

import sys

from batch_job.config import build_parser, config_from_args
from batch_job.job import JobError, print_summary, run
from model_store import ArtifactError


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    cfg = config_from_args(parser.parse_args(argv))
    try:
        summary = run(cfg)
    except (JobError, ArtifactError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print_summary(summary)
    if summary.missing_inputs or summary.duplicate_rows:
        print(
            f"error: the output does not hold every input exactly once (missing "
            f"{summary.missing_inputs}, duplicate rows {summary.duplicate_rows})",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
