import copy
import io
import json
import re

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from dltips.core.params import ParamError
from dltips.data.toys import TinyTransformer
from dltips.nlp.tying import (
    WARN_SHARE,
    check_weight_tying,
    count_parameters,
    find_tied,
    find_untied,
    tie_weights,
    untie_weights,
)
from dltips.task import Task

# GPT-2 small as published (Radford et al. 2019; Hugging Face's "gpt2" reports 124,439,808 parameters, tied).
GPT2_VOCAB, GPT2_WIDTH, GPT2_POSITIONS, GPT2_LAYERS = 50257, 768, 1024, 12
GPT2_TIED = 124_439_808
GPT2_MATRIX = 38_597_376  # 50257 * 768


class Block(nn.Module):
    def __init__(self, d: int, hidden: int):
        super().__init__()
        self.q, self.k, self.v, self.o = (nn.Linear(d, d) for _ in range(4))
        self.fc1, self.fc2 = nn.Linear(d, hidden), nn.Linear(hidden, d)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        h = h + self.o(torch.tanh(self.q(h) + self.k(h) + self.v(h)))
        return h + self.fc2(torch.relu(self.fc1(h)))


class LM(nn.Module):
    """A small language model shaped like nanoGPT: token and position tables, blocks, norm, output layer."""

    def __init__(self, vocab: int = 50, d: int = 8, positions: int = 12, layers: int = 2, hidden: int | None = None,
                 head: bool = True):
        super().__init__()
        self.tok_emb = nn.Embedding(vocab, d)
        self.pos_emb = nn.Embedding(positions, d)
        self.blocks = nn.ModuleList(Block(d, hidden or 4 * d) for _ in range(layers))
        self.norm = nn.LayerNorm(d)
        self.lm_head = nn.Linear(d, vocab) if head else None

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        h = self.tok_emb(tokens) + self.pos_emb(torch.arange(tokens.shape[1]))
        for block in self.blocks:
            h = block(h)
        return self.lm_head(self.norm(h))


def lm_loss(model: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    logits = model(tokens[:, :-1])
    return nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), tokens[:, 1:].reshape(-1))


def tied_lm(seed: int = 0, **kwargs) -> LM:
    torch.manual_seed(seed)
    model = LM(**kwargs).double()
    tie_weights(model.tok_emb, model.lm_head)
    return model


def pairs(found) -> list[tuple[str, str]]:
    return [(p.embedding, p.head) for p in found]


# ---------------------------------------------------------------------- count_parameters


def test_count_parameters_counts_a_tied_matrix_once():
    model = nn.Sequential(nn.Embedding(10, 4), nn.Linear(4, 10))
    assert count_parameters(model) == 10 * 4 + (4 * 10 + 10)
    tie_weights(model[0], model[1])
    assert count_parameters(model) == 10 * 4 + 10


def test_count_parameters_counts_a_reused_module_once_and_frozen_parameters_too():
    shared = nn.Linear(3, 3)
    model = nn.Sequential(shared, nn.ReLU(), shared, nn.Linear(3, 2))
    model[3].weight.requires_grad_(False)
    assert count_parameters(model) == (9 + 3) + (6 + 2)


def test_count_parameters_asks_for_a_forward_pass_on_a_lazy_module():
    model = nn.Sequential(nn.Linear(4, 3), nn.LazyLinear(2))
    with pytest.raises(ValueError, match="parameter 1.weight of a lazy module has no size yet"):
        count_parameters(model)
    model(torch.zeros(1, 4))
    assert count_parameters(model) == (12 + 3) + (6 + 2)


def test_count_parameters_rejects_a_non_module():
    with pytest.raises(TypeError, match="model must be a torch.nn.Module, got list"):
        count_parameters([nn.Linear(2, 2)])


# ---------------------------------------------------------------------- tie_weights and untie_weights


def test_tie_weights_shares_one_parameter_and_keeps_the_bias():
    torch.manual_seed(0)
    embedding, head = nn.Embedding(7, 3), nn.Linear(3, 7)
    bias = head.bias
    tie_weights(embedding, head)
    assert head.weight is embedding.weight
    assert head.bias is bias
    h = torch.randn(5, 3)
    torch.testing.assert_close(head(h), h @ embedding.weight.T + bias)


def test_untie_weights_gives_the_head_an_equal_copy_that_then_trains_on_its_own():
    torch.manual_seed(0)
    embedding, head = nn.Embedding(7, 3), nn.Linear(3, 7)
    tie_weights(embedding, head)
    untie_weights(head)
    assert head.weight is not embedding.weight
    assert head.weight.data_ptr() != embedding.weight.data_ptr()
    torch.testing.assert_close(head.weight, embedding.weight, rtol=0, atol=0)
    assert head.weight.requires_grad
    before = embedding.weight.detach().clone()
    with torch.no_grad():
        head.weight.add_(1.0)
    torch.testing.assert_close(embedding.weight, before, rtol=0, atol=0)


def test_tie_weights_is_a_no_op_on_a_tied_pair():
    embedding, head = nn.Embedding(7, 3), nn.Linear(3, 7)
    tie_weights(embedding, head)
    tie_weights(embedding, head)
    assert head.weight is embedding.weight


@pytest.mark.parametrize("embedding, head, error, pattern", [
    (nn.Linear(3, 7), nn.Linear(3, 7), TypeError, "embedding must be an nn.Embedding, got Linear"),
    (nn.Embedding(7, 3), "lm_head", TypeError, "head must be an nn.Module"),
    (nn.Embedding(7, 3), nn.ReLU(), TypeError, "2-D weight Parameter .* ReLU has no weight"),
    (nn.Embedding(7, 3), nn.LayerNorm(3), TypeError, r"LayerNorm has a weight of type Parameter with shape \(3,\)"),
    (nn.Embedding(7, 3), nn.Linear(7, 3), ValueError, r"head.weight has shape \(3, 7\).* needs .* \(7, 3\)"),
    (nn.Embedding(7, 3, sparse=True), nn.Linear(3, 7), ValueError, "sparse=True"),
    (nn.Embedding(7, 3), nn.Linear(3, 7).double(), ValueError, "torch.float64 .* torch.float32"),
])
def test_tie_weights_rejects_what_cannot_be_tied(embedding, head, error, pattern):
    with pytest.raises(error, match=pattern):
        tie_weights(embedding, head)


def test_untie_weights_rejects_a_module_without_a_matrix():
    with pytest.raises(TypeError, match="head must have a 2-D weight Parameter"):
        untie_weights(nn.Dropout())


# ---------------------------------------------------------------------- state_dict, save, load, train


def test_a_tied_state_dict_loaded_into_a_fresh_tied_model_keeps_the_tie():
    source = tied_lm(seed=0)
    buffer = io.BytesIO()
    torch.save(source.state_dict(), buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)
    assert {"tok_emb.weight", "lm_head.weight"} <= set(state)
    target = tied_lm(seed=1)
    assert not torch.equal(target.tok_emb.weight, source.tok_emb.weight)
    target.load_state_dict(state)
    assert target.lm_head.weight is target.tok_emb.weight
    torch.testing.assert_close(target.tok_emb.weight, source.tok_emb.weight, rtol=0, atol=0)
    tokens = torch.randint(0, 50, (3, 6))
    torch.testing.assert_close(target(tokens), source(tokens), rtol=0, atol=0)


def test_saving_the_whole_module_keeps_the_tie():
    source = tied_lm()
    buffer = io.BytesIO()
    torch.save(source, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    assert loaded.lm_head.weight is loaded.tok_emb.weight
    assert count_parameters(loaded) == count_parameters(source)
    torch.testing.assert_close(loaded.lm_head.weight, source.lm_head.weight, rtol=0, atol=0)


def test_deepcopy_and_dtype_conversion_keep_the_tie():
    model = copy.deepcopy(tied_lm()).float()
    assert model.lm_head.weight is model.tok_emb.weight
    assert model.tok_emb.weight.dtype == torch.float32


def test_the_tied_gradient_is_the_sum_of_the_two_uses_gradients_and_one_step_moves_both_views():
    tied = tied_lm()
    untied = copy.deepcopy(tied)
    untie_weights(untied.lm_head)
    tokens = torch.randint(0, 50, (4, 9), generator=torch.Generator().manual_seed(3))

    lm_loss(untied, tokens).backward()
    from_embedding, from_head = untied.tok_emb.weight.grad, untied.lm_head.weight.grad
    assert from_embedding.abs().sum() > 0 and from_head.abs().sum() > 0

    lm_loss(tied, tokens).backward()
    shared = tied.tok_emb.weight
    torch.testing.assert_close(shared.grad, from_embedding + from_head, rtol=1e-10, atol=1e-12)
    assert not torch.allclose(shared.grad, from_head)

    before = shared.detach().clone()
    lr = 0.5
    torch.optim.SGD(tied.parameters(), lr=lr).step()
    assert tied.lm_head.weight is tied.tok_emb.weight
    torch.testing.assert_close(tied.lm_head.weight.detach(), before - lr * (from_embedding + from_head),
                               rtol=1e-10, atol=1e-12)


def test_an_optimizer_sees_the_tied_matrix_once():
    model = tied_lm()
    optimizer = torch.optim.AdamW(model.parameters())
    listed = [p for group in optimizer.param_groups for p in group["params"]]
    assert sum(p is model.tok_emb.weight for p in listed) == 1
    assert sum(p.numel() for p in listed) == count_parameters(model)


# ---------------------------------------------------------------------- finding pairs


def test_find_untied_and_find_tied_on_a_small_language_model():
    model = LM()
    assert pairs(find_untied(model)) == [("tok_emb", "lm_head")]
    assert find_untied(model)[0].shape == (50, 8) and find_untied(model)[0].parameters == 400
    assert find_tied(model) == []
    tie_weights(model.tok_emb, model.lm_head)
    assert find_untied(model) == []
    assert pairs(find_tied(model)) == [("tok_emb", "lm_head")]
    assert find_tied(model)[0].tied


def test_a_square_position_table_is_not_paired_with_attention_projections():
    # positions == d == 8: pos_emb is 8 x 8 like every q/k/v/o weight, and the token table is 50 x 8
    model = LM(vocab=50, d=8, positions=8)
    assert pairs(find_untied(model)) == [("tok_emb", "lm_head")]


def test_a_square_position_table_is_not_paired_with_a_final_square_pooler():
    # BERT-like: no output layer over the vocabulary, and an 8 x 8 pooler registered last
    model = LM(vocab=50, d=8, positions=8, head=False)
    model.pooler = nn.Linear(8, 8)
    assert find_untied(model) == []
    assert check_weight_tying(model) == []


def test_with_vocabulary_equal_to_width_the_last_layer_pairs_with_the_first_table():
    # vocab == positions == d == 8: both tables are square; only the final layer is an output layer
    model = LM(vocab=8, d=8, positions=8, layers=1)
    found = find_untied(model)
    assert pairs(found) == [("tok_emb", "lm_head")]
    assert found[0].also_matches == ["pos_emb"]


def test_square_tables_and_no_matching_final_layer_give_nothing():
    # one block, so its 8 x 8 q/k/v/o weights are not excluded as repeated layers
    model = LM(vocab=8, d=8, positions=8, layers=1, head=False)
    model.classifier = nn.Linear(8, 3)
    assert find_untied(model) == []


def test_layers_repeated_across_blocks_are_not_output_layers():
    # vocab == 4 * d: every block's fc1 (32 x 8) has the token table's shape
    headless = LM(vocab=32, d=8, head=False)
    assert find_untied(headless) == []
    with_head = LM(vocab=32, d=8)
    assert pairs(find_untied(with_head)) == [("tok_emb", "lm_head")]


def test_with_one_block_the_output_layer_is_the_last_match():
    # vocab == 4 * d again, one block: blocks.0.fc1 is not repeated, and lm_head comes after it
    assert pairs(find_untied(LM(vocab=32, d=8, layers=1))) == [("tok_emb", "lm_head")]
    # the same in the repository's TinyTransformer: its feed-forward layer is 128 x 32, like the vocabulary
    model = TinyTransformer(vocab=128, max_len=16, dim=32)
    assert model.blocks.layers[0].linear1.weight.shape == model.embed.weight.shape
    assert pairs(find_untied(model)) == [("embed", "head")]


def test_a_classifier_registered_after_the_output_layer_does_not_hide_it():
    model = LM()
    model.multiple_choice = nn.Linear(8, 1)  # like GPT2DoubleHeadsModel
    assert pairs(find_untied(model)) == [("tok_emb", "lm_head")]


def test_tables_shared_by_several_modules_count_as_one_embedding():
    # T5-like: encoder and decoder reuse one token table, and the output layer is tied to it
    class Seq2Seq(nn.Module):
        def __init__(self):
            super().__init__()
            self.shared = nn.Embedding(40, 6)
            self.encoder, self.decoder = nn.Module(), nn.Module()
            self.encoder.embed_tokens, self.decoder.embed_tokens = self.shared, nn.Embedding(40, 6)
            self.decoder.embed_tokens.weight = self.shared.weight
            self.lm_head = nn.Linear(6, 40, bias=False)

    model = Seq2Seq()
    assert pairs(find_untied(model)) == [("shared", "lm_head")]
    tie_weights(model.shared, model.lm_head)
    assert pairs(find_tied(model)) == [("shared", "lm_head")]
    assert count_parameters(model) == 40 * 6


def test_models_without_a_table_or_an_output_layer_of_its_shape_give_nothing():
    cnn = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Flatten(), nn.LazyLinear(10))
    mlp = nn.Sequential(nn.Linear(20, 50), nn.ReLU(), nn.Linear(50, 10))
    categorical = nn.Sequential(nn.Embedding(100, 6), nn.Flatten(), nn.Linear(6, 1))
    for model in (cnn, mlp, categorical):
        assert find_untied(model) == [] and find_tied(model) == []
        assert check_weight_tying(model) == []


def test_find_functions_reject_a_non_module():
    with pytest.raises(TypeError, match="model must be a torch.nn.Module, got dict"):
        find_untied({"lm_head": nn.Linear(2, 2)})
    with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
        check_weight_tying(None)


# ---------------------------------------------------------------------- the check


def test_the_check_takes_a_task_or_a_bare_module_and_the_common_arguments():
    model = LM()
    tokens = torch.randint(0, 50, (8, 6), generator=torch.Generator().manual_seed(0))
    data = TensorDataset(tokens[:, :-1], tokens[:, 1:])
    task = Task(model, data, data, kind="language-model", n_classes=50)
    [bare] = check_weight_tying(model)
    [of_task] = check_weight_tying(task, device="auto", seed=3, max_items=5, deadline=60.0)
    assert (of_task.status, of_task.message, of_task.evidence) == (bare.status, bare.message, bare.evidence)
    tied = LM()
    tie_weights(tied.tok_emb, tied.lm_head)
    assert check_weight_tying(task, model=tied)[0].status == "pass"
    for bad in ({"max_items": "5"}, {"seed": -1}, {"deadline": "soon"}, {"device": "no-such-device"},
                {"model": "net"}):
        with pytest.raises(ParamError, match=next(iter(bad))):
            check_weight_tying(task, **bad)
    with pytest.raises(ParamError, match="max_items"):
        check_weight_tying(model, max_items="5")


def test_check_warns_with_the_saving_and_a_fix_that_names_the_modules():
    model = LM()
    total = count_parameters(model)
    [finding] = check_weight_tying(model)
    assert finding.tip == "weight-tying"
    assert finding.status == ("warn" if 400 / total >= WARN_SHARE else "info")
    assert "\n" not in finding.title
    assert "lm_head.weight (50 x 8 = 400 parameters) has the shape of tok_emb.weight" in finding.message
    assert f"({400 / total:.0%})" in finding.message
    assert "dltips.tie_weights(model.tok_emb, model.lm_head)" in finding.fix
    assert finding.evidence["saved"] == 400
    assert finding.evidence["parameters"] == total
    assert finding.evidence["parameters_if_tied"] == total - 400
    assert finding.evidence["share"] == pytest.approx(400 / total)
    json.dumps(finding.to_dict(), allow_nan=False)


def test_an_untied_head_that_is_a_small_share_of_the_model_is_info_not_warn():
    small = nn.ModuleDict({"emb": nn.Embedding(10, 8), "body": nn.Linear(8, 400), "out": nn.Linear(400, 8),
                           "head": nn.Linear(8, 10)})
    large = nn.ModuleDict({"emb": nn.Embedding(500, 8), "body": nn.Linear(8, 8), "head": nn.Linear(8, 500)})
    [quiet], [loud] = check_weight_tying(small), check_weight_tying(large)
    assert quiet.evidence["share"] < WARN_SHARE and quiet.status == "info"
    assert loud.evidence["share"] >= WARN_SHARE and loud.status == "warn"


def test_the_fix_runs_as_written_on_nested_modules():
    class Wrapped(nn.Module):
        def __init__(self):
            super().__init__()
            self.transformer = nn.ModuleDict({"wte": nn.Embedding(30, 4), "h": nn.ModuleList([nn.Linear(4, 4)])})
            self.heads = nn.ModuleDict({"0": nn.Linear(4, 30)})

    model = Wrapped()
    [finding] = check_weight_tying(model)
    call = re.search(r"dltips\.tie_weights\((.*?)\)(?:,|$)", finding.fix).group(1)
    assert call == "model.transformer.wte, model.heads['0']"
    embedding, head = eval(call, {"model": model})
    tie_weights(embedding, head)
    assert model.heads["0"].weight is model.transformer.wte.weight
    assert check_weight_tying(model)[0].status == "pass"


def test_check_passes_on_a_tied_model_and_names_the_pair():
    model = tied_lm()
    [finding] = check_weight_tying(model)
    assert finding.status == "pass"
    assert "lm_head.weight is tok_emb.weight (50 x 8 = 400 parameters, stored once)" in finding.message
    assert finding.evidence["tied"][0]["embedding"] == "tok_emb"
    assert finding.evidence["parameters"] == count_parameters(model)
    json.dumps(finding.to_dict(), allow_nan=False)


def test_tiny_transformer_is_untied_and_the_suggested_tie_works():
    torch.manual_seed(0)
    model = TinyTransformer(vocab=10, max_len=16, dim=32)
    [finding] = check_weight_tying(model)
    assert finding.status == "info"  # 320 of about 13k parameters: below WARN_SHARE
    assert "dltips.tie_weights(model.embed, model.head)" in finding.fix
    before = count_parameters(model)
    tie_weights(model.embed, model.head)
    assert count_parameters(model) == before - 10 * 32
    assert check_weight_tying(model)[0].status == "pass"
    assert model(torch.randint(0, 10, (2, 5))).shape == (2, 5, 10)


def gpt2_small(device: str = "meta") -> nn.Module:
    """GPT-2 small's parameter shapes (Linear in place of Hugging Face's transposed Conv1D), without memory."""
    d = GPT2_WIDTH

    class GPT2Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.ln_1, self.ln_2 = nn.LayerNorm(d), nn.LayerNorm(d)
            self.attn = nn.ModuleDict({"c_attn": nn.Linear(d, 3 * d), "c_proj": nn.Linear(d, d)})
            self.mlp = nn.ModuleDict({"c_fc": nn.Linear(d, 4 * d), "c_proj": nn.Linear(4 * d, d)})

    class GPT2(nn.Module):
        def __init__(self):
            super().__init__()
            self.transformer = nn.ModuleDict({
                "wte": nn.Embedding(GPT2_VOCAB, d), "wpe": nn.Embedding(GPT2_POSITIONS, d),
                "h": nn.ModuleList(GPT2Block() for _ in range(GPT2_LAYERS)), "ln_f": nn.LayerNorm(d),
            })
            self.lm_head = nn.Linear(d, GPT2_VOCAB, bias=False)

    with torch.device(device):
        return GPT2()


def test_gpt2_small_saves_50257_by_768_about_a_third_of_the_tied_model():
    model = gpt2_small()
    assert model.lm_head.weight.is_meta
    assert count_parameters(model) == GPT2_TIED + GPT2_MATRIX
    [finding] = check_weight_tying(model)
    assert finding.status == "warn"
    evidence = finding.evidence
    assert evidence["saved"] == GPT2_MATRIX == 50257 * 768
    assert evidence["parameters_if_tied"] == GPT2_TIED
    assert evidence["share"] == pytest.approx(38_597_376 / 163_037_184)  # 23.7 % of the untied model
    assert evidence["share_of_tied"] == pytest.approx(38_597_376 / 124_439_808)  # 31 %: "about a third"
    assert "50257 x 768 = 38.6M parameters" in finding.message
    assert "38.6M of the model's 163.0M parameters (24%), leaving 124.4M, of which the shared matrix is 31%" \
        in finding.message
    assert "dltips.tie_weights(model.transformer.wte, model.lm_head)" in finding.fix
    tie_weights(model.transformer.wte, model.lm_head)
    assert count_parameters(model) == GPT2_TIED
    assert check_weight_tying(model)[0].status == "pass"
