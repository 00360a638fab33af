"""What the families' checkpoint mappings share: flat arrays, PyTorch layouts and renaming rules.

A family's mapping (`contract.Checkpoints`, declared on its class) turns a foreign checkpoint's
flat arrays (`Flat`: PyTorch '.'-joined or '/'-joined names) into its own flat keys with these
helpers, and writes Hugging Face arrays back with `to_torch` and `invert`.
"""

from __future__ import annotations

import re

import numpy as np

Flat = dict[str, np.ndarray]
Rules = tuple[tuple[str, str], ...]  # regular expression substitutions, applied in order
# `layers.MultiHeadAttention`'s projections -> timm's names (with `q`, `k`, `v` unfused).
TIMM_ATTENTION = {'query': 'q', 'key': 'k', 'value': 'v', 'out': 'proj'}


# ----------------------------------------------------------------------------- PyTorch layouts

def linear(weight: np.ndarray) -> np.ndarray:
    """PyTorch `Linear.weight` `[out, in]` -> flax `Dense.kernel` `[in, out]`."""
    return weight.T


def conv(weight: np.ndarray) -> np.ndarray:
    """PyTorch conv weight `[out, in, h, w]` -> flax kernel `[h, w, in, out]`."""
    return weight.transpose(2, 3, 1, 0)


def to_torch(params: Flat) -> Flat:
    """Parameters keyed `module/.../leaf` (no collection prefix) -> PyTorch arrays keyed
    `module.....leaf`: the inverse of `linear`, `conv` and `attention`, whose `query`, `key`,
    `value` and `out` become timm's `q`, `k`, `v` (separate projections `[heads * head_dim,
    dim]`, as Hugging Face keeps them) and `proj`; LayerNorm `scale` and every `kernel` become
    `weight`, other arrays keep their names."""
    out = {}
    for key, value in params.items():
        module, _, leaf = key.rpartition('/')
        parent, _, name = module.rpartition('/')
        if name in TIMM_ATTENTION:
            module = f'{parent}/{TIMM_ATTENTION[name]}'
        if leaf == 'kernel' and value.ndim == 3:  # layers.MultiHeadAttention
            value = (value.reshape(-1, value.shape[-1]) if name == 'out' else
                     value.reshape(value.shape[0], -1)).T
        elif leaf == 'kernel':
            value = value.transpose(3, 2, 0, 1) if value.ndim == 4 else value.T
        elif leaf == 'bias' and value.ndim == 2:
            value = value.reshape(-1)
        leaf = 'weight' if leaf in ('kernel', 'scale') else leaf
        out[f'{module.replace("/", ".")}.{leaf}' if module else leaf] = value
    return out


def attention(prefix: str, qkv_weight: np.ndarray, qkv_bias: np.ndarray | None,
              proj_weight: np.ndarray, proj_bias: np.ndarray, num_heads: int) -> Flat:
    """A fused PyTorch `qkv` + `proj` attention -> `layers.MultiHeadAttention` arrays under
    `prefix` (`query`/`key`/`value` kernels `[dim, heads, head_dim]`, `out` `[heads, head_dim,
    dim]`)."""
    dim = proj_weight.shape[0]
    head_dim = qkv_weight.shape[0] // 3 // num_heads
    out = {f'{prefix}/out/kernel': proj_weight.T.reshape(num_heads, head_dim, dim),
           f'{prefix}/out/bias': proj_bias}
    width = num_heads * head_dim
    for i, name in enumerate(('query', 'key', 'value')):
        rows = slice(i * width, (i + 1) * width)
        out[f'{prefix}/{name}/kernel'] = qkv_weight[rows].T.reshape(dim, num_heads, head_dim)
        if qkv_bias is not None:
            out[f'{prefix}/{name}/bias'] = qkv_bias[rows].reshape(num_heads, head_dim)
    return out


# ----------------------------------------------------------------------------- renaming rules


def rename(arrays: Flat, rules: Rules) -> Flat:
    """Renames every key by the regular expression substitutions `rules`, applied in order."""
    out = {}
    for key, value in arrays.items():
        for pattern, new in rules:
            key = re.sub(pattern, new, key)
        out[key] = value
    return out


def hf_names(arrays: Flat, rules: Rules, root: str) -> Flat:
    """Arrays under the names a family's reading `rules` give (timm's, say) -> the Hugging Face
    names they read (`invert(rules)`), all but the classifiers' (`classifier.weight`, ...) under
    the model's `root` (`swin.`; '' for a base model)."""
    named = rename(arrays, invert(rules))
    return {k if re.match(r'\w*classifier\.', k) else root + k: v for k, v in named.items()}


def fuse_qkv(arrays: Flat) -> Flat:
    """Separate `{prefix}.q`, `.k`, `.v` projections (Hugging Face) -> one `{prefix}.qkv`
    (timm): weights `[3 * dim, dim]`, biases `[3 * dim]`."""
    out = dict(arrays)
    for key in arrays:
        match = re.fullmatch(r'(.*)\.q\.(weight|bias)', key)
        if match:
            parts = [out.pop(f'{match[1]}.{p}.{match[2]}') for p in 'qkv']
            out[f'{match[1]}.qkv.{match[2]}'] = np.concatenate(parts)
    return out


_RULE_TOKEN = re.compile(r'\\([^\w])|\(([^()]*)\)|(\w)')  # escaped char, group, letter


def invert(rules: Rules) -> Rules:
    """The substitutions that undo `rules` (applied in reverse order): what writes a family's
    foreign names back from the rules that read them.

    A pattern may hold literal text (`\\.` escaped), a leading `^` and a trailing `$`, groups of
    alternative spellings whose first is the one written back (`(self\\.query|q_proj)`), and
    groups that its replacement takes over (`(\\d+)` and `\\1`); anything else is a
    `ValueError`.
    """
    return tuple(_invert_rule(pattern, new) for pattern, new in reversed(rules))


def _invert_rule(pattern: str, replacement: str) -> tuple[str, str]:
    start, end = pattern.startswith('^'), pattern.endswith('$')
    body = pattern[start:len(pattern) - end]
    groups, written, pos = [], [], 0  # written: literal text, or the number of a taken group
    while pos < len(body):
        token = _RULE_TOKEN.match(body, pos)
        if token is None:
            raise ValueError(f'cannot invert the rule {pattern!r}: {body[pos:]!r}')
        escaped, group, literal = token.groups()
        if group is not None and '|' in group:
            groups.append(None)
            written.append(re.sub(r'\\(.)', r'\1', group.split('|')[0]))
        elif group is not None:
            groups.append(group)
            written.append(len(groups))
        else:
            written.append(escaped or literal)
        pos = token.end()
    taken, new_pattern = {}, ''
    for piece in re.split(r'(\\\d)', replacement):
        if re.fullmatch(r'\\\d', piece):
            number = int(piece[1])
            taken[number] = len(taken) + 1
            new_pattern += f'({groups[number - 1]})'
        else:
            new_pattern += re.escape(piece)
    if any(isinstance(w, int) and w not in taken for w in written):
        raise ValueError(f'cannot invert the rule {pattern!r}: a group its replacement drops')
    new = ''.join(rf'\g<{taken[w]}>' if isinstance(w, int) else w for w in written)
    return '^' * start + new_pattern + '$' * end, new
