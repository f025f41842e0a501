"""CLIP's text tower, frozen, and the prompts whose words Stage II learns.

``CLIPTextEncoder`` is callable on token ids, directly on word embeddings, or on a ``PromptTemplate``
with learnable words in its slots (prompts "A photo of a X1..XM person.").
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn
from transformers import CLIPModel, CLIPTokenizer

from itkm_lightning.errors import ConfigError
from itkm_lightning.models.clip_loading import check_clip_layout
from itkm_lightning.models.tokenizer import END_OF_TEXT_ID


class CLIPTextEncoder(nn.Module):
    """CLIP's text tower, frozen: EOT token after the final layer norm, projected by `text_projection`.

    Gradients still flow to `inputs_embeds` of `encode_embeddings`, which is how learnable prompt
    words are trained while every CLIP weight stays fixed.
    """

    def __init__(self, clip_model: CLIPModel, eot_token_id: int = END_OF_TEXT_ID) -> None:
        super().__init__()
        check_clip_layout(clip_model)
        text = clip_model.text_model
        self.eot_token_id = eot_token_id
        self.token_embedding: nn.Embedding = text.embeddings.token_embedding
        self.position_embedding: nn.Embedding = text.embeddings.position_embedding
        self.encoder = text.encoder
        self.final_layer_norm = text.final_layer_norm
        self.text_projection = clip_model.text_projection
        self.register_buffer("log_logit_scale", clip_model.logit_scale.detach().clone())
        self.requires_grad_(False)
        self.train(False)

    def train(self, mode: bool = True) -> CLIPTextEncoder:
        return super().train(False)  # frozen: always in eval mode, whatever the LightningModule asks

    @property
    def context_length(self) -> int:
        return int(self.position_embedding.num_embeddings)

    @property
    def projection_dim(self) -> int:
        return int(self.text_projection.out_features)

    @property
    def logit_scale(self) -> Tensor:
        """CLIP's learned temperature, exp(logit_scale) (100 for OpenAI's models)."""
        return self.log_logit_scale.exp()

    def encode(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        """(B, L) token ids -> (B, P) text features.

        `attention_mask` is accepted for tokenizer-output convenience but changes nothing: attention is
        causal, so padding after the EOT token never reaches the EOT feature.
        """
        if input_ids.dim() != 2 or input_ids.dtype.is_floating_point:
            shape = tuple(input_ids.shape)
            raise ValueError(f"input_ids must be an integer tensor (B, L), got {input_ids.dtype} {shape}")
        is_eot = input_ids == self.eot_token_id
        if not bool(is_eot.any(dim=1).all()):
            raise ValueError("every row of input_ids needs an <|endoftext|> token; tokenize with clip_tokenizer().")
        eot_positions = is_eot.int().argmax(dim=1)  # first EOT: padding reuses the same id
        return self.encode_embeddings(self.token_embedding(input_ids), eot_positions)

    def encode_embeddings(self, inputs_embeds: Tensor, eot_positions: Tensor) -> Tensor:
        """(B, L, W) word embeddings (no position embedding yet) + EOT index per row -> (B, P)."""
        batch, length = inputs_embeds.shape[:2]
        if inputs_embeds.dim() != 3 or length > self.context_length:
            raise ValueError(
                f"inputs_embeds must be (B, L<={self.context_length}, {self.token_embedding.embedding_dim}), "
                f"got {tuple(inputs_embeds.shape)}"
            )
        if eot_positions.shape != (batch,):
            raise ValueError(f"eot_positions must have shape ({batch},), got {tuple(eot_positions.shape)}")
        hidden = inputs_embeds + self.position_embedding.weight[:length].to(inputs_embeds.dtype)
        mask = causal_attention_mask(length, hidden.dtype, hidden.device)
        hidden = self.final_layer_norm(self.encoder(inputs_embeds=hidden, attention_mask=mask)[0])
        eot_states = hidden[torch.arange(batch, device=hidden.device), eot_positions.to(hidden.device)]
        return self.text_projection(eot_states)

    def encode_prompts(self, template: PromptTemplate, words: Tensor) -> Tensor:
        """(B, M, W) learnable word embeddings written into ``template``'s M slots -> (B, P) text features.

        Every row shares the template's fixed words; only the slots differ. The sequence stops at the
        EOT token (attention is causal, so padding would change nothing).
        """
        slots = template.slot_positions
        if words.dim() != 3 or words.shape[1:] != (slots.numel(), self.token_embedding.embedding_dim):
            raise ValueError(
                f"words must have shape (B, {slots.numel()}, {self.token_embedding.embedding_dim}), "
                f"got {tuple(words.shape)}"
            )
        length = template.eot_position + 1
        fixed = self.token_embedding(template.input_ids[:length].to(self.token_embedding.weight.device))
        embeds = fixed.to(words.dtype).unsqueeze(0).expand(words.shape[0], -1, -1).clone()
        embeds[:, slots.to(embeds.device)] = words  # differentiable w.r.t. words only
        eot = torch.full((words.shape[0],), template.eot_position, dtype=torch.long, device=embeds.device)
        return self.encode_embeddings(embeds, eot)


class PromptTemplate(NamedTuple):
    """A tokenised prompt with placeholder slots, e.g. "A photo of a X X X X person."."""

    input_ids: Tensor  # (L,) token ids from <|startoftext|> to the first <|endoftext|> (inclusive)
    slot_positions: Tensor  # (M,) indices of the placeholder words in input_ids
    eot_position: int


def build_prompt_template(
    tokenizer: CLIPTokenizer, num_words: int, prefix: str = "A photo of a", suffix: str = "person.",
    placeholder: str = "X",
) -> PromptTemplate:
    """Tokenise ``f"{prefix} {placeholder * num_words} {suffix}"`` and locate the placeholder tokens."""
    if num_words < 1:
        raise ConfigError(f"num_words must be >= 1, got {num_words}")
    placeholder_ids = tokenizer(placeholder, add_special_tokens=False)["input_ids"]
    if len(placeholder_ids) != 1:
        raise ConfigError(f"placeholder {placeholder!r} must be a single CLIP token; use a short word such as 'X'")
    text = " ".join(part for part in (prefix, " ".join([placeholder] * num_words), suffix) if part)
    ids = torch.tensor(tokenizer(text)["input_ids"], dtype=torch.long)
    slots = torch.nonzero(ids == placeholder_ids[0], as_tuple=True)[0]
    if slots.numel() != num_words:
        raise ConfigError(
            f"the prompt {text!r} holds the placeholder {placeholder!r} {slots.numel()} times instead of "
            f"{num_words}; remove it from the prompt prefix/suffix or choose another placeholder."
        )
    is_eot = ids == tokenizer.eos_token_id
    if not bool(is_eot.any()):
        raise ValueError(f"the tokenised prompt {text!r} has no <|endoftext|> token")
    eot = int(is_eot.int().argmax())
    return PromptTemplate(input_ids=ids[: eot + 1], slot_positions=slots, eot_position=eot)


def causal_attention_mask(length: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """Additive (1, 1, L, L) mask: token i attends to tokens <= i (what CLIP's text tower was trained with).

    Built here because transformers' `create_causal_mask` changed signature across releases; an additive
    float mask means the same to its eager and SDPA attention.
    """
    blocked = torch.ones(length, length, dtype=torch.bool, device=device).triu(diagonal=1)
    mask = torch.zeros(length, length, dtype=dtype, device=device).masked_fill(blocked, torch.finfo(dtype).min)
    return mask[None, None]
