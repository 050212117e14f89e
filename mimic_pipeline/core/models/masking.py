"""Layer-wise attention mask: in the deeper language-model layers, vision tokens see only their own image.

In a masked layer a vision-token query attends causally within its own image's block; a text query
attends causally to every (non-padding) key, as usual. Every other layer is ordinary causal attention.
The dense reference (`dense_layer_mask`) is

    causal AND key_not_padding AND (query_is_text OR segment(query) == segment(key))

Two implementations that must agree numerically, chosen by `LayerMask.mode`:

* "dense": SDPA with that boolean (B, 1, S, S) mask. Simple, but an explicit mask disables SDPA's causal
  fast path, so it costs *more* than unmasked attention.
* "block" (training / evaluation): vision queries are computed per image block (blocks of equal length in
  one batched causal SDPA call), text queries in one masked call over all keys, then scattered back. The
  pairs computed are sum(L_img^2)/2 + n_text * S instead of S^2/2.

How it reaches the model. `enable_layer_mask` registers one attention function (and the stock SDPA mask
builder, so the model still builds its causal + padding mask) under `ATTENTION_NAME`, switches only the
language model to it, and tags the masked layers' attention modules. The token layout comes from
`layer_mask_context`, a context variable the caller wraps around `forward` / `generate`; it is computed
once per call, not per layer. Untagged layers and decode steps go straight to transformers' SDPA path.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward, use_gqa_in_sdpa
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

ATTENTION_NAME = "mimic_layer_mask"
MODES = ("block", "dense")
_MODE_ATTR = "_mimic_layer_mask_mode"  # set on the attention modules of masked layers
_STATE_ATTR = "_mimic_layer_mask_state"  # set on the model: (LayerMask, previous text attn implementation)


class LayerMaskError(RuntimeError):
    """A masked layer cannot apply the mask (missing or mismatched token layout)."""


def default_masked_layers(num_layers: int) -> range:
    """The second half of the language model (the study's default)."""
    return range(num_layers // 2, num_layers)


@dataclass(frozen=True)
class LayerMask:
    """Which language-model layers are masked (None: `default_masked_layers`), and how."""

    layers: Sequence[int] | None = None
    mode: str = "block"

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"LayerMask.mode must be one of {MODES}, got {self.mode!r}")
        if self.layers is not None:
            object.__setattr__(self, "layers", tuple(sorted({int(i) for i in self.layers})))


# ---------------------------------------------------------------------------------------------
# The reference mask and the per-forward layout
# ---------------------------------------------------------------------------------------------


def _key_valid(segment_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
    if segment_ids.ndim != 2:
        raise ValueError(f"segment_ids must be (batch, seq_len), got shape {tuple(segment_ids.shape)}")
    if attention_mask is None:
        return torch.ones_like(segment_ids, dtype=torch.bool)
    if attention_mask.shape != segment_ids.shape:
        raise ValueError(
            f"attention_mask {tuple(attention_mask.shape)} and segment_ids {tuple(segment_ids.shape)} differ in shape"
        )
    return attention_mask.to(device=segment_ids.device, dtype=torch.bool)


def dense_layer_mask(segment_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """(B, 1, S, S) boolean mask, True = may attend: the reference for a masked layer.

    `segment_ids` (B, S): -1 for text tokens, k >= 0 for the tokens of the item's k-th image.
    `attention_mask` (B, S): 1 for real tokens, 0 for padding (left or right); None = no padding.
    """
    valid = _key_valid(segment_ids, attention_mask)
    pos = torch.arange(segment_ids.shape[1], device=segment_ids.device)
    causal = pos[:, None] >= pos[None, :]
    same_image = segment_ids[:, :, None] == segment_ids[:, None, :]
    query_is_text = (segment_ids < 0)[:, :, None]
    return (causal & valid[:, None, :] & (query_is_text | same_image))[:, None]


class MaskLayout:
    """Gather/scatter indices for one batch, built once per forward by `layer_mask_context`.

    Attributes (all on one device):
      blocks    one (batch_idx (n, 1), positions (n, L)) pair per distinct image length L
      text_pos  (B, T) positions of each item's text queries (padding counts as text), right-filled
                with a vision position so that no row is empty; None when there is no text at all
      text_mask (B, 1, T, S) query position >= key position & key valid
      text_keep indices of the real (not filler) text rows in the flattened (B*T) text output
      inverse   (B*S,) where each token's output row sits in the concatenation [blocks..., text]
    """

    def __init__(self, segment_ids: torch.Tensor, attention_mask: torch.Tensor | None = None):
        valid = _key_valid(segment_ids, attention_mask)
        segment_ids = segment_ids.long()
        self.segment_ids, self.key_valid = segment_ids, valid
        self.batch, self.seq_len = B, S = segment_ids.shape
        device = segment_ids.device
        vision = segment_ids >= 0
        if (vision & ~valid).any():
            raise ValueError("a vision token (segment_ids >= 0) is marked as padding in attention_mask")

        # image blocks: runs of one segment id; each (item, image) must be exactly one run
        before = F.pad(segment_ids, (1, 0), value=-1)[:, :-1]
        after = F.pad(segment_ids, (0, 1), value=-1)[:, 1:]
        start_b, start_p = (vision & (segment_ids != before)).nonzero(as_tuple=True)
        _, end_p = (vision & (segment_ids != after)).nonzero(as_tuple=True)  # row-major: pairs with the starts
        image = segment_ids[start_b, start_p]
        if torch.unique(start_b * (int(segment_ids.max().clamp(min=0)) + 1) + image).numel() != image.numel():
            raise ValueError("each image's tokens must be contiguous: some segment id appears in two runs of one item")
        lengths = end_p - start_p + 1
        self.blocks = []
        order = []  # flat token index (b * S + pos) of every output row, in concatenation order
        for length in lengths.unique().tolist():
            chosen = lengths == length
            b = start_b[chosen][:, None]
            p = start_p[chosen][:, None] + torch.arange(length, device=device)
            self.blocks.append((b, p))
            order.append((b * S + p).reshape(-1))

        # text queries, padding included: each item's text positions first, in order (stable sort)
        n_text = (~vision).sum(1)
        T = int(n_text.max()) if B else 0
        self.text_pos = self.text_mask = self.text_keep = None
        if T:
            self.text_pos = torch.sort(vision.to(torch.int8), dim=1, stable=True).indices[:, :T]
            real = torch.arange(T, device=device) < n_text[:, None]
            key_pos = torch.arange(S, device=device)
            self.text_mask = ((self.text_pos[:, :, None] >= key_pos) & valid[:, None, :])[:, None]
            self.text_keep = real.reshape(-1).nonzero().squeeze(1)
            rows = torch.arange(B, device=device)[:, None] * S + self.text_pos
            order.append(rows[real])
        order = torch.cat(order) if order else torch.empty(0, dtype=torch.long, device=device)
        assert order.numel() == B * S, "every token is a vision query or a text query exactly once"
        self.inverse = torch.empty_like(order)
        self.inverse[order] = torch.arange(order.numel(), device=device)
        self._dense: torch.Tensor | None = None
        self._on: dict[torch.device, MaskLayout] = {}

    @property
    def has_images(self) -> bool:
        return bool(self.blocks)

    @property
    def dense(self) -> torch.Tensor:
        """The reference mask, built on first use (only dense mode needs it)."""
        if self._dense is None:
            self._dense = dense_layer_mask(self.segment_ids, self.key_valid)
        return self._dense

    def to(self, device: torch.device) -> MaskLayout:
        """This layout on `device` (moved once, then cached), so callers may build it on the CPU."""
        if self.segment_ids.device == device:
            return self
        if device not in self._on:
            moved = object.__new__(MaskLayout)
            for name, value in vars(self).items():
                if isinstance(value, torch.Tensor):
                    value = value.to(device)
                elif name == "blocks":
                    value = [(b.to(device), p.to(device)) for b, p in value]
                setattr(moved, name, value)
            moved._dense, moved._on = None, {}
            self._on[device] = moved
        return self._on[device]


_LAYOUT: contextvars.ContextVar[MaskLayout | None] = contextvars.ContextVar("mimic_layer_mask_layout", default=None)


@contextlib.contextmanager
def layer_mask_context(segment_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> Iterator[MaskLayout]:
    """Make the token layout of the next forward / generate call visible to the masked layers.

        with layer_mask_context(segment_ids, attention_mask):
            out = model(input_ids=..., attention_mask=attention_mask, ...)

    `segment_ids` must describe the sequence the language model sees (after image tokens are expanded).
    Under gradient checkpointing the recomputation runs during backward: call backward inside the context.
    """
    token = _LAYOUT.set(MaskLayout(segment_ids, attention_mask))
    try:
        yield _LAYOUT.get()
    finally:
        _LAYOUT.reset(token)


# ---------------------------------------------------------------------------------------------
# The attention function
# ---------------------------------------------------------------------------------------------


def _sdpa(module, query, key, value, mask, dropout, scaling, is_causal):
    """One SDPA call with transformers' GQA choice: native `enable_gqa` where the kernel supports it."""
    groups = getattr(module, "num_key_value_groups", 1)
    extra = {}
    if groups > 1:
        if use_gqa_in_sdpa(mask, key, value):
            extra["enable_gqa"] = True
        else:
            key, value = repeat_kv(key, groups), repeat_kv(value, groups)
    return F.scaled_dot_product_attention(
        query, key, value, attn_mask=mask, dropout_p=dropout, scale=scaling, is_causal=is_causal, **extra
    )


def block_attention(module, query, key, value, layout: MaskLayout, dropout: float = 0.0, scaling: float | None = None):
    """Masked-layer attention computed per image block; returns (B, S, H, d) like `sdpa_attention_forward`."""
    B, H, S, d = query.shape
    pieces = []
    for b, p in layout.blocks:
        # advanced indices around a slice put their dims first: (n, L, H, d) -> (n, H, L, d)
        q, k, v = (t[b, :, p].transpose(1, 2) for t in (query, key, value))
        out = _sdpa(module, q, k, v, None, dropout, scaling, is_causal=True)
        pieces.append(out.transpose(1, 2).reshape(-1, H, d))
    if layout.text_pos is not None:
        T = layout.text_pos.shape[1]
        q = query.gather(2, layout.text_pos[:, None, :, None].expand(B, H, T, d))
        out = _sdpa(module, q, key, value, layout.text_mask, dropout, scaling, is_causal=False)
        pieces.append(out.transpose(1, 2).reshape(B * T, H, d)[layout.text_keep])
    return torch.cat(pieces)[layout.inverse].view(B, S, H, d), None


def layer_mask_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """The function registered as `ATTENTION_NAME`; same signature and output layout as SDPA's."""
    mode = getattr(module, _MODE_ATTR, None)
    q_len, kv_len = query.shape[2], key.shape[2]
    layout = _LAYOUT.get()
    if mode is None or q_len == 1 or (q_len < kv_len and (layout is None or q_len != layout.seq_len)):
        # unmasked layer, or a decode step / cached continuation: exactly the ordinary SDPA path
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs)
    where = f"layer {getattr(module, 'layer_idx', '?')}"
    if kwargs.get("sliding_window") is not None:
        raise LayerMaskError(f"{where} uses sliding-window attention, which the layer mask does not implement")
    if layout is None:
        raise LayerMaskError(
            f"{where} is a masked layer but no token layout is set: wrap the forward / generate call in "
            "`with layer_mask_context(segment_ids, attention_mask):` (or call disable_layer_mask(model)). Under "
            "gradient checkpointing the layers run again during backward: call backward inside the context too."
        )
    if (query.shape[0], q_len, kv_len) != (layout.batch, layout.seq_len, layout.seq_len):
        raise LayerMaskError(
            f"{where}: the layout set by layer_mask_context is for batch {layout.batch} x {layout.seq_len} tokens, but "
            f"this forward has batch {query.shape[0]}, {q_len} queries and {kv_len} keys. segment_ids must describe the "
            "sequence the language model sees (image tokens expanded); a prefill into a non-empty or static cache "
            "is not supported."
        )
    layout = layout.to(query.device)
    if mode == "dense":
        return sdpa_attention_forward(module, query, key, value, layout.dense, dropout=dropout, scaling=scaling, **kwargs)
    if not layout.has_images:  # pure-text batch: the model's own causal + padding mask is the masked-layer mask
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs)
    return block_attention(module, query, key, value, layout, dropout, scaling)


# ---------------------------------------------------------------------------------------------
# Installing it on a model
# ---------------------------------------------------------------------------------------------


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The transformers model under a peft wrapper (PeftModel.get_base_model), or the model itself."""
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


def _language_model(model: torch.nn.Module) -> torch.nn.Module:
    decoder = model.get_decoder()
    if not hasattr(decoder, "layers"):
        raise TypeError(f"{type(model).__name__}: cannot find the language model's decoder layers")
    return decoder


def enable_layer_mask(model: torch.nn.Module, layer_mask: LayerMask) -> LayerMask:
    """Install the mask on a LLaVA-OneVision or Qwen2-VL model (peft-wrapped or not); returns the resolved LayerMask.

    Only the language model switches attention implementation; the vision tower keeps its own. Calling it
    again replaces the previous mask.
    """
    AttentionInterface.register(ATTENTION_NAME, layer_mask_attention)
    # The stock SDPA mask builder, so unmasked layers and decode steps get the usual causal + padding mask.
    AttentionMaskInterface.register(ATTENTION_NAME, sdpa_mask)

    base = _unwrap(model)
    lm = _language_model(base)
    n_layers = len(lm.layers)
    layers = default_masked_layers(n_layers) if layer_mask.layers is None else layer_mask.layers
    if bad := [i for i in layers if not 0 <= i < n_layers]:
        raise ValueError(f"masked layers {bad} are outside the language model's {n_layers} layers")
    resolved = LayerMask(layers=layers, mode=layer_mask.mode)

    previous = getattr(base, _STATE_ATTR, None)
    if previous is not None:
        disable_layer_mask(model)
    text_config = base.config.get_text_config()
    setattr(base, _STATE_ATTR, (resolved, text_config._attn_implementation))
    base.set_attn_implementation({"text_config": ATTENTION_NAME})
    for i, layer in enumerate(lm.layers):
        if i in resolved.layers:
            setattr(layer.self_attn, _MODE_ATTR, resolved.mode)
    return resolved


def disable_layer_mask(model: torch.nn.Module) -> None:
    """Undo `enable_layer_mask`: untag the layers and restore the language model's attention implementation."""
    base = _unwrap(model)
    state = getattr(base, _STATE_ATTR, None)
    if state is None:
        return
    _, previous_impl = state
    for layer in _language_model(base).layers:
        if hasattr(layer.self_attn, _MODE_ATTR):
            delattr(layer.self_attn, _MODE_ATTR)
    base.set_attn_implementation({"text_config": previous_impl})
    delattr(base, _STATE_ATTR)


def layer_mask_of(model: torch.nn.Module) -> LayerMask | None:
    """The LayerMask installed on `model`, or None."""
    state = getattr(_unwrap(model), _STATE_ATTR, None)
    return state[0] if state else None
