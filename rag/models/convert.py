"""Convert a GGUF file once into a safetensors folder that transformers loads in about a second.

transformers can read GGUF directly (``gguf_file=``), but it dequantises every tensor on every load
(20-55 s for the packs here). We pay that once: load, undo the GGUF quantiser bookkeeping that blocks
``save_pretrained``, re-tie embeddings the GGUF stored twice, save in float32, then reload the folder and
check that it gives the same logits as the model we loaded.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rag.errors import PackError
from rag.io import atomic_directory
from rag.lazy import require

# A GGUF may store one upstream matrix twice (token_embd and output) at different precisions. Two copies
# of one matrix differ by quantisation noise only (4% at Q5_0/Q8_0, 8% at Q4_K/Q6_K); two trained
# matrices differ by about 100% or more.
_SAME_MATRIX_TOLERANCE = 0.3
_CHECK_PROMPT = "The capital of France is"


def convert_gguf(gguf_file: str | Path, target: str | Path, *, say: Callable[[str], None] = print) -> dict[str, Any]:
    """Convert ``gguf_file`` into a transformers folder at ``target`` (replaced atomically); return a report.

    The report holds the parameter counts before and after re-tying, whether the embeddings were re-tied and
    from which GGUF tensor, the largest logit difference between the GGUF model and the saved folder, and
    the seconds each step took. Raises :class:`~rag.errors.PackError` if the saved folder does not
    reproduce the GGUF model's logits.

    >>> convert_gguf("SmolLM2-135M-Instruct.Q4_1.gguf", "smollm2")  # doctest: +SKIP
    """
    torch = require("torch", "generate")
    transformers = require("transformers", "generate")
    require("gguf", "generate")
    require("accelerate", "generate")
    gguf_file, target = Path(gguf_file), Path(target)
    if not gguf_file.is_file():
        raise PackError(f"GGUF file {gguf_file} does not exist")
    report: dict[str, Any] = {"source": gguf_file.name, "seconds": {}}

    started = time.perf_counter()
    say(f"loading {gguf_file.name} with transformers (dequantising every tensor; the slow step)")
    kwargs = {"gguf_file": gguf_file.name}
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(str(gguf_file.parent), **kwargs)
        model = transformers.AutoModelForCausalLM.from_pretrained(str(gguf_file.parent), dtype=torch.float32, **kwargs)
    except Exception as exc:  # re-raised with the file named: transformers' messages do not say which file
        raise PackError(f"transformers could not load GGUF file {gguf_file}: {type(exc).__name__}: {exc}") from exc
    model.eval()
    report["seconds"]["load_gguf"] = round(time.perf_counter() - started, 2)
    report["parameters_loaded"] = _parameters(model)

    _drop_quantizer(model)
    report["retied_from"] = _retie_embeddings(model, gguf_file, say)
    report["parameters"] = _parameters(model)
    report["architecture"] = type(model).__name__
    say(
        f"{report['architecture']}: {report['parameters_loaded'] / 1e6:.1f}M parameters as loaded, "
        f"{report['parameters'] / 1e6:.1f}M saved"
    )

    inputs = tokenizer(_CHECK_PROMPT, return_tensors="pt")
    with torch.no_grad():
        expected = model(**inputs).logits

    started = time.perf_counter()
    with atomic_directory(target) as staging:
        staging.chmod(0o755)  # mkdtemp makes it private; the cache may be read by other users
        model.save_pretrained(str(staging))
        tokenizer.save_pretrained(str(staging))
        del model
        gc.collect()  # hold one copy of the weights at a time: the 1.5B model is 7 GB in float32
        report["max_logit_difference"] = _check_reload(transformers, torch, staging, inputs, expected)
    report["seconds"]["save_and_check"] = round(time.perf_counter() - started, 2)
    say(f"wrote {target} (reloaded and checked: largest logit difference {report['max_logit_difference']:.2e})")
    return report


def _parameters(model: Any) -> int:
    # parameters() yields a shared (tied) tensor once, so this is the count that save_pretrained stores.
    return sum(p.numel() for p in model.parameters())


def _drop_quantizer(model: Any) -> None:
    """transformers refuses ``save_pretrained`` on a GGUF-loaded model while it still looks quantised."""
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.is_quantized = False


def _bits_per_weight(tensor_type: Any) -> float:
    import gguf

    block_size, type_size = gguf.GGML_QUANT_SIZES[tensor_type]
    return type_size * 8 / block_size


def _retie_embeddings(model: Any, gguf_file: Path, say: Callable[[str], None]) -> str:
    """Tie input and output embeddings again when the GGUF holds one matrix twice; return the kept tensor.

    llama.cpp's converters write a tied matrix as both ``token_embd.weight`` and ``output.weight`` for some
    models (Qwen2.5-0.5B: Q5_0 and Q8_0), and transformers then loads two matrices (630M parameters instead
    of 494M). We keep the more precise copy for both roles, as upstream has one matrix.
    """
    import gguf
    import torch

    inputs, outputs = model.get_input_embeddings(), model.get_output_embeddings()
    if outputs is None or inputs.weight is outputs.weight:
        return "already tied"
    types = {t.name: t.tensor_type for t in gguf.GGUFReader(str(gguf_file)).tensors}
    if "token_embd.weight" not in types or "output.weight" not in types:
        return "untied (GGUF lacks token_embd or output)"
    if inputs.weight.shape != outputs.weight.shape:
        return "untied (different shapes)"
    difference = _relative_difference(inputs.weight.data, outputs.weight.data)
    if difference > _SAME_MATRIX_TOLERANCE:
        say(f"keeping separate input and output embeddings (they differ by {difference:.0%}: two trained matrices)")
        return "untied (different matrices)"
    in_bits, out_bits = _bits_per_weight(types["token_embd.weight"]), _bits_per_weight(types["output.weight"])
    with torch.no_grad():
        if out_bits >= in_bits:
            inputs.weight = outputs.weight
            kept = f"output.weight ({types['output.weight'].name}, over token_embd {types['token_embd.weight'].name})"
        else:
            outputs.weight = inputs.weight
            kept = f"token_embd.weight ({types['token_embd.weight'].name}, over output {types['output.weight'].name})"
    model.config.tie_word_embeddings = True
    say(f"re-tied input and output embeddings (copies differ by {difference:.1%}); kept {kept}")
    return kept


def _relative_difference(a: Any, b: Any, rows: int = 8192) -> float:
    """||a - b|| / ||b||, a block of rows at a time (a full difference of 150k x 1.5k floats is 1 GB)."""
    squared_difference, squared_norm = 0.0, 0.0
    for start in range(0, a.shape[0], rows):
        block_a, block_b = a[start:start + rows], b[start:start + rows]
        squared_difference += float((block_a - block_b).pow(2).sum())
        squared_norm += float(block_b.pow(2).sum())
    return (squared_difference / max(squared_norm, 1e-30)) ** 0.5


def _check_reload(transformers: Any, torch: Any, folder: Path, inputs: Any, expected: Any) -> float:
    """Reload the saved folder and compare its logits with the GGUF model's; a mismatch is an error."""
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32)
    reloaded.eval()
    with torch.no_grad():
        actual = reloaded(**inputs).logits
    difference = float((actual - expected).abs().max())
    del reloaded
    gc.collect()
    if not difference <= 1e-3:
        raise PackError(
            f"converted folder {folder} does not reproduce the GGUF model: logits differ by up to {difference:.3g}"
        )
    return difference
