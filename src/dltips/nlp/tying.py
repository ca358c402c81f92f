"""Weight tying: one matrix for the input token embedding and the output layer (tip `weight-tying`).

A language model's embedding maps token ids to vectors through a (vocab, d)
matrix, and its output layer maps vectors back to vocabulary logits through a
matrix of the same shape. Sharing one matrix between them improves perplexity
and removes vocab * d parameters (Press & Wolf 2017, "Using the Output
Embedding to Improve Language Models"; Inan et al. 2017, "Tying Word Vectors
and Word Classifiers"). GPT-2 small ties them: 50257 x 768 = 38.6M parameters,
a third of its 124.4M.

`tie_weights` and `untie_weights` do and undo the tie; `find_tied` and
`find_untied` look for embedding/output-layer pairs in any `nn.Module`;
`check_weight_tying` turns that into a finding; `count_parameters` counts a
shared tensor once.

A tie is one `nn.Parameter` registered under two names. It survives
`state_dict()` / `load_state_dict()` into a tied model (both keys are written,
and both copy into the one tensor), `torch.save` of the whole module, `.to()`
and `copy.deepcopy`. Loading a checkpoint whose two matrices differ into a tied
model keeps whichever key loads last: load untied checkpoints into an untied
model, then tie.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from dltips.core.checks import check_args
from dltips.core.deadline import Deadline
from dltips.core.device import resolve_device
from dltips.core.params import ParamError, instance
from dltips.findings import Finding
from dltips.task import Task

TIP = "weight-tying"


@dataclass
class TyingCandidate:
    """An input embedding and an output layer whose weights have the same (vocab, d) shape.

    `embedding` and `head` are module names as in `model.named_modules()`
    ("" is the model itself). `parameters` is vocab * d, what the tie saves (or
    saves already, when `tied`). `also_matches` names other untied embeddings
    of the same shape that the head could be tied to instead.
    """

    embedding: str
    head: str
    shape: tuple[int, int]
    parameters: int
    tied: bool
    also_matches: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"embedding": self.embedding, "head": self.head, "shape": list(self.shape),
                "parameters": self.parameters, "tied": self.tied, "also_matches": list(self.also_matches)}


# ---------------------------------------------------------------------- tie, untie, count


def tie_weights(embedding: nn.Embedding, head: nn.Module) -> None:
    """Make `head.weight` the very Parameter `embedding.weight` is (Press & Wolf 2017; Inan et al. 2017).

    `head` is usually an `nn.Linear(d, vocab)`; any module with a 2-D `weight`
    Parameter of shape (num_embeddings, embedding_dim) is accepted. Its bias is
    kept. The shared matrix keeps the embedding's values, so initialise it as an
    embedding (GPT-2: normal, std 0.02). Tie before building the optimizer: an
    optimizer made earlier still holds the head's old, now unused, matrix.
    Rows of `padding_idx`, which the embedding never updates, get gradients
    from the output side once tied.
    """
    instance("embedding", embedding, nn.Embedding, "an nn.Embedding")
    weight = _matrix_of(head, "head")
    expected = (embedding.num_embeddings, embedding.embedding_dim)
    if tuple(weight.shape) != expected:
        raise ParamError(f"head.weight has shape {tuple(weight.shape)}, but tying to an Embedding({expected[0]}, "
                         f"{expected[1]}) needs (num_embeddings, embedding_dim) = {expected}: an nn.Linear("
                         f"{expected[1]}, {expected[0]}) projecting back to the embedding's vocabulary")
    if embedding.sparse:
        raise ParamError("the embedding has sparse=True, but a tied matrix also gets the output layer's dense "
                         "gradient, so its gradient is dense and sparse-only optimizers (SparseAdam) reject it. "
                         "Use an Embedding with sparse=False")
    shared = embedding.weight
    if weight.dtype != shared.dtype or weight.device != shared.device:
        raise ParamError(f"head.weight is {weight.dtype} on {weight.device} but embedding.weight is {shared.dtype} on "
                         f"{shared.device}; move or cast the modules to one dtype and device before tying")
    head.weight = shared


def untie_weights(head: nn.Module) -> None:
    """Give `head` its own copy of its weight (same values, same requires_grad): the undo of `tie_weights`.

    Build the optimizer after untying, so that it sees the new matrix.
    """
    weight = _matrix_of(head, "head")
    head.weight = nn.Parameter(weight.detach().clone(), requires_grad=weight.requires_grad)


def count_parameters(model: nn.Module) -> int:
    """The number of parameter values in `model`, each tensor counted once however many names it has.

    A tied embedding and output layer count once, as the memory they use does.
    """
    _check_module(model)
    seen: set[int] = set()
    total = 0
    for name, parameter in model.named_parameters(remove_duplicate=False):
        if isinstance(parameter, nn.parameter.UninitializedParameter):
            raise ParamError(f"parameter {name} of a lazy module has no size yet; run one forward pass before counting")
        if id(parameter) not in seen:
            seen.add(id(parameter))
            total += parameter.numel()
    return total


# ---------------------------------------------------------------------- finding pairs


def find_tied(model: nn.Module) -> list[TyingCandidate]:
    """Output layers whose weight is an embedding's weight (the same Parameter), in module order."""
    embeddings, heads = _embeddings_and_heads(model)
    pairs = []
    for name, weight in heads:
        for emb_name, emb_weight in embeddings:
            if weight is emb_weight:
                pairs.append(_candidate(emb_name, name, emb_weight, tied=True))
    return pairs


def find_untied(model: nn.Module) -> list[TyingCandidate]:
    """Output layers that could be tied to an input embedding and are not, in module order.

    Any module that is not an embedding and has a 2-D `weight` Parameter is a
    possible output layer. Shapes alone are ambiguous: a (4d, d) up-projection
    in every block matches a vocabulary of 4d, a d x d attention projection
    matches a position table of d rows. The rules that keep those out:
      - embeddings and layers that are already tied take no part;
      - an embedding of shape (vocab, d) pairs with the last module, in module
        order, whose weight is (vocab, d) (output layers are registered after
        the body in nanoGPT and in Hugging Face's GPT-2, BERT, T5 and Llama);
      - layers repeated across blocks are not output layers: a match whose name
        with its numeric parts blanked ("blocks.#.mlp.fc") is shared by another
        match is dropped;
      - a square embedding (vocab == d) is as likely a position or segment table,
        so it is ignored when the model has a non-square embedding, and
        otherwise pairs only with the model's last weight matrix;
      - a layer that matches several embeddings pairs with the first in module
        order (the token table comes first in common models); the others are
        listed in `also_matches`.
    An output layer written as `h @ self.embedding.weight.T`, with no module of
    its own, is tied already and is found by neither function.
    """
    embeddings, heads = _embeddings_and_heads(model)
    tied = find_tied(model)
    tied_embeddings = {pair.embedding for pair in tied}
    tied_heads = {pair.head for pair in tied}
    free_heads = [(name, weight) for name, weight in heads if name not in tied_heads]
    free_embeddings = [(name, weight) for name, weight in embeddings if name not in tied_embeddings]
    any_non_square = any(weight.shape[0] != weight.shape[1] for _, weight in embeddings)
    last_matrix = heads[-1][0] if heads else None
    chosen: dict[str, TyingCandidate] = {}
    for emb_name, emb_weight in free_embeddings:
        square = emb_weight.shape[0] == emb_weight.shape[1]
        if square and any_non_square:
            continue
        head = _head_for(emb_weight, free_heads)
        if head is None or (square and head != last_matrix):
            continue
        if head in chosen:
            chosen[head].also_matches.append(emb_name)
        else:
            chosen[head] = _candidate(emb_name, head, emb_weight, tied=False)
    order = [name for name, _ in heads]
    return sorted(chosen.values(), key=lambda pair: order.index(pair.head))


def _head_for(emb_weight: torch.Tensor, heads: list[tuple[str, nn.Parameter]]) -> str | None:
    """The last head of the embedding's shape whose name pattern no other such head shares."""
    matches = [name for name, weight in heads if weight.shape == emb_weight.shape]
    patterns = [_pattern(name) for name in matches]
    unique = [name for name, pattern in zip(matches, patterns) if patterns.count(pattern) == 1]
    return unique[-1] if unique else None


def _pattern(name: str) -> str:
    """A module name with its numeric parts blanked: "h.11.mlp.c_fc" -> "h.#.mlp.c_fc"."""
    return ".".join("#" if part.isdigit() else part for part in name.split("."))


def _embeddings_and_heads(model: nn.Module) -> tuple[list[tuple[str, nn.Parameter]], list[tuple[str, nn.Parameter]]]:
    """Embeddings (one name per distinct weight, the first) and other modules with a 2-D weight, in module order."""
    _check_module(model)
    embeddings: list[tuple[str, nn.Parameter]] = []
    heads: list[tuple[str, nn.Parameter]] = []
    for name, module in model.named_modules():
        weight = getattr(module, "weight", None)
        if not isinstance(weight, nn.Parameter) or isinstance(weight, nn.parameter.UninitializedParameter):
            continue  # no weight, a computed one (parametrizations), or a lazy module's, sized on the first call
        if weight.dim() != 2:
            continue
        if isinstance(module, (nn.Embedding, nn.EmbeddingBag)):
            if not any(weight is seen for _, seen in embeddings):
                embeddings.append((name, weight))
        else:
            heads.append((name, weight))
    return embeddings, heads


def _candidate(embedding: str, head: str, weight: torch.Tensor, tied: bool) -> TyingCandidate:
    rows, cols = weight.shape
    return TyingCandidate(embedding, head, (int(rows), int(cols)), int(rows * cols), tied)


# ---------------------------------------------------------------------- the check


def check_weight_tying(
    task: Task | nn.Module,
    *,
    model: nn.Module | None = None,
    device: torch.device | str | None = None,
    seed: int = 0,
    max_items: int | None = None,
    deadline: Deadline | float | None = None,
) -> list[Finding]:
    """The `weight-tying` verdict: "warn" for an output layer that could share the embedding's matrix and would save
    at least `WARN_SHARE` of the parameters by it ("info" below that), else "pass".

    A structural check: it reads the modules of `model` (default `task.model`), so `task` may also be
    a bare `nn.Module` (the model itself). "pass" names the tied pairs. A model without an embedding
    and an output layer of its shape (an image classifier, an encoder without an output layer) gets
    an empty list: the tip does not apply, and saying so on every non-language model would be noise.
    Parameters are counted once per tensor. Nothing is run or drawn: `device`, `seed`, `max_items`
    and `deadline` are validated for the common check signature only.
    """
    seed, max_items, deadline = check_args(seed, max_items, deadline)
    if model is None:
        model = task.model if isinstance(task, Task) else task
    _check_module(model)
    resolve_device(device, model)
    untied = find_untied(model)
    tied = find_tied(model)
    if not untied and not tied:
        return []
    total = count_parameters(model)
    if untied:
        return [_untied_finding(model, untied, tied, total)]
    pairs = "; ".join(f"{_weight(p.head)} is {_weight(p.embedding)} ({_shape(p)} = "
                      f"{_amount(p.parameters)} parameters, stored once)" for p in tied)
    return [Finding(TIP, "pass", "Output layer tied to the input embedding",
                    f"{pairs}. The model has {_amount(total)} parameters.",
                    evidence={"tied": [p.to_dict() for p in tied], "parameters": total})]


# An untied output layer is a warning when tying would save at least this share of the model's parameters.
# GPT-2 small's token matrix is 31% of its 124M parameters and BERT-base's 21% of 110M (both tie it); a
# Transformer whose vocabulary is small next to its width (a character model) saves a few percent, which is a
# choice, not a fault (several large models keep the matrices apart on purpose).
WARN_SHARE = 0.20


def _untied_finding(model: nn.Module, untied: list[TyingCandidate], tied: list[TyingCandidate], total: int) -> Finding:
    saved = sum(p.parameters for p in untied)
    share, after = saved / total, total - saved
    parts = []
    for pair in untied:
        others = f" (also the shape of {', '.join(map(_weight, pair.also_matches))})" if pair.also_matches else ""
        parts.append(f"{_weight(pair.head)} ({_shape(pair)} = {_amount(pair.parameters)} parameters) has the shape of "
                     f"{_weight(pair.embedding)}{others} and is a separate matrix.")
    if tied:
        parts.append("Already tied: " + ", ".join(f"{_weight(p.head)} to {_weight(p.embedding)}" for p in tied) + ".")
    parts.append(f"Tying would save {_amount(saved)} of the model's {_amount(total)} parameters ({share:.0%}), "
                 f"leaving {_amount(after)}, of which the shared matri{'ces are' if len(untied) > 1 else 'x is'} "
                 f"{saved / after:.0%}.")
    calls = "; ".join(f"dltips.tie_weights({_path(model, p.embedding)}, {_path(model, p.head)})" for p in untied)
    title = (f"Output layer not tied to the input embedding: {_amount(saved)} parameters to save" if len(untied) == 1
             else f"{len(untied)} output layers not tied to input embeddings: {_amount(saved)} parameters to save")
    if share < WARN_SHARE:
        parts.append(f"At {share:.0%} of the model the saving is small: worth taking, not a problem to fix.")
    return Finding(
        TIP, "warn" if share >= WARN_SHARE else "info", title, " ".join(parts),
        fix=(f"{calls}, before building the optimizer. The shared matrix keeps the embedding's values: initialise it "
             "as an embedding (GPT-2: normal, std 0.02). Some large models keep the two apart on purpose; the "
             "saving matters most when the vocabulary is large next to the rest of the model."),
        evidence={"untied": [p.to_dict() for p in untied], "tied": [p.to_dict() for p in tied], "parameters": total,
                  "saved": saved, "share": share, "parameters_if_tied": after, "share_of_tied": saved / after},
    )


def _weight(module_name: str) -> str:
    return f"{module_name}.weight" if module_name else "weight"


def _shape(pair: TyingCandidate) -> str:
    return f"{pair.shape[0]} x {pair.shape[1]}"


def _amount(n: int) -> str:
    """A parameter count for a sentence: 38.6M, 12.3k, or the exact number below 10,000."""
    if n >= 1_000_000:
        return f"{n / 1e6:.1f}M"
    if n >= 10_000:
        return f"{n / 1e3:.1f}k"
    return f"{n:,}"


def _path(model: nn.Module, module_name: str) -> str:
    """Python that reaches the module from `model`: model.h[0].attn, or model.get_submodule(...) for odd names."""
    if not module_name:
        return "model"
    parts = module_name.split(".")
    if not all(part.isidentifier() or part.isdigit() for part in parts):
        return f"model.get_submodule({module_name!r})"
    path, parent = "model", model
    for part in parts:
        if part.isdigit():
            path += f"[{part!r}]" if isinstance(parent, nn.ModuleDict) else f"[{part}]"
        else:
            path += f".{part}"
        parent = parent.get_submodule(part)
    return path


def _check_module(model: object) -> None:
    instance("model", model, nn.Module, "a torch.nn.Module")


def _matrix_of(module: object, role: str) -> nn.Parameter:
    """`module.weight`, checked to be a 2-D Parameter."""
    instance(role, module, nn.Module, "an nn.Module (usually nn.Linear)")
    weight = getattr(module, "weight", None)
    if not isinstance(weight, nn.Parameter) or weight.dim() != 2:
        found = "no weight" if weight is None else f"a weight of type {type(weight).__name__}"
        if isinstance(weight, torch.Tensor):
            found += f" with shape {tuple(weight.shape)}"
        raise ParamError(f"{role} must have a 2-D weight Parameter (as nn.Linear has), but {type(module).__name__} "
                        f"has {found}")
    return weight
