"""A tiny random Llama with a locally trained byte-level BPE tokenizer (no network).

The tokenizer behaves like real GPT-2-style tokenizers (spaces inside tokens, character
offsets that cover the whole text) and has a ChatML template, so the same code paths run as
with SmolLM2. Weights are random, with a large init range so distributions are not uniform.
"""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

CHATML = (
    "{% for message in messages %}"
    "{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a tiny test model.<|im_end|>\n' }}{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

CORPUS = [
    "The capital of France is Paris. The capital of Italy is Rome.",
    "A shop sells pens at 3 dollars each. Seven pens cost 21 dollars.",
    "Let me think step by step.\n\nFirst, add the numbers.\n\nThe answer is 42.",
    "What is the capital of Australia? It is Canberra, not Sydney.",
    "The quick brown fox jumps over the lazy dog while the cat sleeps on a mat.",
    "Hello there! How can I help you today? I am a helpful assistant.",
] * 4


def build_tokenizer(vocab_size: int = 400) -> PreTrainedTokenizerFast:
    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    core.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    core.train_from_iterator(CORPUS, trainer)
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token="<|endoftext|>",
    )
    tok.chat_template = CHATML
    return tok


def build_tiny_model(
    path: Path, *, layers: int = 2, context: int = 256, seed: int = 0, vocab_size: int = 400
) -> Path:
    """Write a tiny Llama (safetensors) and its tokenizer to ``path``; return ``path``."""
    tok = build_tokenizer(vocab_size)
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=context,
        initializer_range=0.3,
        tie_word_embeddings=False,
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).eval()
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path, safe_serialization=True)
    tok.save_pretrained(path)
    return path
