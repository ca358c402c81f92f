"""The tips: the 28 heuristics dltips implements, each with a fixed id.

Each `Tip` names the public objects that implement it (`implemented_by`, dotted
import paths). A tip whose implementation is still to come has an empty list;
`dltips tips` says so instead of pretending.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field

from dltips.core.params import ParamError

THEMES = ("training", "data", "monitoring", "efficiency", "nlp", "tabular")
THEME_TITLES = {
    "training": "General > Training",
    "data": "Data",
    "monitoring": "Monitoring & Debugging",
    "efficiency": "Efficiency",
    "nlp": "NLP",
    "tabular": "Tabular",
}
KINDS = ("trick", "check", "monitor", "info", "trick+check")


@dataclass(frozen=True)
class Tip:
    id: str
    theme: str
    kind: str
    title: str
    advice: str
    implemented_by: list[str] = field(default_factory=list)

    def resolve(self) -> list[object]:
        """Import and return the objects named in `implemented_by`."""
        return [resolve_name(name) for name in self.implemented_by]


def resolve_name(dotted: str) -> object:
    """Import `package.module.attr` (attribute lookups after the longest importable module)."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ModuleNotFoundError:
            continue
        for attr in parts[cut:]:
            obj = getattr(obj, attr)
        return obj
    raise ImportError(f"cannot import {dotted!r}")


_TIPS = [
    # General > Training
    Tip(
        "default-lr", "training", "trick", "Start Adam/AdamW at 3e-4; small models tolerate more",
        "For Adam or AdamW and a model of ordinary size, 3e-4 is a learning rate that rarely "
        "fails. Smaller models can take larger steps without diverging, so the default grows as "
        "the parameter count shrinks. A short LR range test confirms the choice on your data.",
        ["dltips.default_lr", "dltips.lr_find", "dltips.check_lr"],
    ),
    Tip(
        "overfit-tiny", "training", "check", "Overfit one example, then a few",
        "Before training on everything, make sure the model can drive the loss to nearly zero on "
        "one example and then on a handful. Failing on one example points at the optimisation or "
        "the training code (a wrong loss, detached graph, frozen weights); failing only on several "
        "points at batch-dependent layers or label handling.",
        ["dltips.check_overfit_tiny", "dltips.doctor"],
    ),
    Tip(
        "mixup", "training", "trick", "Mixup: train on blends of example pairs",
        "Blend each example with a random partner, x = lam*x_i + (1-lam)*x_j with lam drawn from "
        "Beta(alpha, alpha), and blend their targets the same way. The model learns to behave "
        "linearly between examples instead of memorising them, which makes it more tolerant of "
        "label noise. It works for tabular rows and embeddings too, but needs longer training there.",
        ["dltips.Mixup", "dltips.TabularModel"],
    ),
    Tip(
        "mixed-precision", "training", "trick", "Mixed precision: spend the saved memory on bigger batches",
        "Half-precision activations take about half the memory, so a larger batch fits on the "
        "GPU. A larger batch means fewer steps per epoch: raise the learning rate with the batch "
        "size and train for more epochs to keep the number of updates. With fp16, scale the loss "
        "and unscale the gradients before clipping them.",
        ["dltips.MixedPrecision", "dltips.amp_plan"],
    ),
    Tip(
        "overfit-then-regularize", "training", "check", "First reach zero training error, then regularise",
        "Check that the model has the capacity to fit the whole training set. If it cannot, the "
        "architecture or the optimisation is at fault and regularisation will not help. Once it "
        "can, close the gap to validation with weight decay, dropout, augmentation or early stopping.",
        ["dltips.check_capacity", "dltips.doctor"],
    ),
    Tip(
        "batch-size-lr-scaling", "training", "trick", "Scale the learning rate with the batch size",
        "When the batch size changes by a factor k, change the learning rate by k (linear rule) "
        "or by sqrt(k) (a more cautious rule, often better for adaptive optimisers). Count the "
        "effective batch: micro-batch x accumulation steps x number of processes.",
        ["dltips.scale_lr", "dltips.check_loss_reduction"],
    ),
    Tip(
        "one-cycle", "training", "trick", "One cycle: short warm-up, long high LR, long cosine anneal",
        "Warm up quickly from a small learning rate, stay high for long to explore, then anneal "
        "for long to a very small rate to settle into a minimum. Move momentum the other way: "
        "low while the rate is high, high while it is low.",
        ["dltips.OneCycle", "dltips.fit"],
    ),
    Tip(
        "initialization", "training", "check", "The loss at initialisation should be what the task implies",
        "Weights stay close to their initial values, so initialisation matters. At step zero the "
        "model should be maximally unsure: the loss should be the entropy of the label prior "
        "(ln C for C balanced classes, ln V per token for a language model, the target variance "
        "for mean-squared regression). A much larger loss means over-confident initial outputs.",
        ["dltips.check_initial_loss", "dltips.check_output_layer", "dltips.doctor"],
    ),
    # Data
    Tip(
        "worst-predictions", "data", "check", "Look at the worst predictions",
        "Rank examples by loss and look at the confident mistakes (positives scored near 0, "
        "negatives near 1) and at the least confident ones (near 0.5). They expose preprocessing "
        "bugs and wrong labels faster than any aggregate metric.",
        ["dltips.check_worst_predictions", "dltips.doctor"],
    ),
    Tip(
        "verify-transforms", "data", "check", "Look at the output of every transform",
        "Before a transform goes into the pipeline, look at what it produces and at the "
        "statistics of what finally reaches the model: a step can destroy what the label depends "
        "on, and inputs can end up unnormalised or normalised twice.",
        ["dltips.check_inputs", "dltips.check_stable_pairing", "dltips.preview", "dltips.doctor"],
    ),
    Tip(
        "image-resolution", "data", "check", "Experiment at 128 px, not at 32 px",
        "Below roughly 96 x 96 pixels images behave differently, so conclusions drawn on tiny "
        "images often do not carry over to large ones. Around 128 px, experiments are still fast "
        "and their conclusions tend to hold at full size.",
        ["dltips.check_image_resolution", "dltips.doctor"],
    ),
    Tip(
        "toy-problems", "data", "trick", "Build small problems with known answers",
        "Small, fast datasets with a known answer let you test an idea or a pipeline in seconds. "
        "Keep one or two that resemble your real problem.",
        ["dltips.data.toys.spirals", "dltips.data.toys.moons", "dltips.data.toys.shapes",
         "dltips.data.toys.copy_sequence", "dltips.data.toys.reverse_sequence", "dltips.data.toys.messy_categories"],
    ),
    Tip(
        "label-preserving-augmentation", "data", "check", "Augment only in ways that keep the label",
        "Any data can be augmented as long as the label stays (almost) the same. Check that the "
        "augmented examples still make sense and that their labels still hold.",
        ["dltips.check_label_preserving", "dltips.doctor"],
    ),
    Tip(
        "augmentation-invariances", "data", "info", "Augmentation teaches invariances, not new facts",
        "Augmentation adds no information: it shows the same distribution from other angles, "
        "making an invariance you already know (a flipped cat is a cat) explicit so that the "
        "model does not have to discover it from data.",
        ["dltips.describe_invariances", "dltips.doctor"],
    ),
    Tip(
        "compose-augmentations", "data", "trick", "Compose geometric transforms into one resample",
        "Every resample blurs the image a little, and chained rotate/zoom/crop steps compound the "
        "loss. Resize large once, then fold all geometric steps and the final resize into a "
        "single warp applied on the accelerator.",
        ["dltips.AffineAugment", "dltips.Lighting", "dltips.presize"],
    ),
    Tip(
        "val-test-match", "data", "check", "Validation and test must come from the same distribution",
        "Training data may differ from what the model meets in use, but validation and test must "
        "match each other: validation is only useful as a stand-in for the test.",
        ["dltips.check_val_test_match", "dltips.check_split_overlap", "dltips.doctor"],
    ),
    # Monitoring & Debugging
    Tip(
        "activation-gradient-stats", "monitoring", "monitor", "Watch activation and gradient distributions",
        "Per layer, watch histograms of activations and gradients and the share of saturated or "
        "dead units. Saturated activations with near-zero gradients mean the layer has stopped learning.",
        ["dltips.watch", "dltips.Watch", "dltips.check_gradient_flow", "dltips.doctor"],
    ),
    Tip(
        "update-ratio", "monitoring", "monitor", "Keep the update-to-weight ratio near 1e-2",
        "Compare the size of each update with the size of the weights it changes. Around 1e-2 is "
        "healthy; near 1e-5 the layer is not learning, near 0.5 it moves too fast. Adjust the "
        "learning rate to bring layers into the band.",
        ["dltips.watch", "dltips.Watch", "dltips.check_gradient_flow", "dltips.doctor"],
    ),
    Tip(
        "error-gaps", "monitoring", "check", "Read the three error gaps",
        "Training error shows bias (underfitting); the validation-training gap shows variance "
        "(overfitting); the test-validation gap shows overfitting to the validation set, usually "
        "from too much tuning against it.",
        ["dltips.check_error_gaps", "dltips.monitor.gaps.measure_error_gaps", "dltips.check_target_leak",
         "dltips.check_causal_leak", "dltips.doctor"],
    ),
    Tip(
        "metric-divergence", "monitoring", "monitor", "Metrics agree early and diverge later",
        "Early on most metrics improve together; later they pull apart (precision against "
        "recall, RMSE against MAPE). Optimise the metric that matches your objective and keep the "
        "others as guardrails.",
        ["dltips.MetricTracker", "dltips.evaluate", "dltips.doctor"],
    ),
    # Efficiency
    Tip(
        "gradient-accumulation", "efficiency", "trick", "Accumulate gradients to train a large batch in small pieces",
        "When a batch does not fit in memory, split it into micro-batches, back-propagate each "
        "and step the optimizer once per window. Normalised by the items in the whole window, "
        "the gradient equals the large batch's, except for layers that depend on the batch in "
        "the forward pass such as BatchNorm.",
        ["dltips.GradientAccumulator", "dltips.fit"],
    ),
    # NLP
    Tip(
        "compute-scaling", "nlp", "trick", "Trade parameters against tokens for a compute budget",
        "Training compute is about 6 x parameters x tokens. For a fixed budget you can grow the "
        "model or train it on more tokens; published fits give the compute-optimal balance "
        "(about 20 tokens per parameter).",
        ["dltips.compute_budget", "dltips.flops_per_token", "dltips.mfu"],
    ),
    Tip(
        "logloss-downstream", "nlp", "monitor", "Validation log-loss tracks downstream quality",
        "For language models, lower validation log-loss goes with better downstream results, so "
        "it is a cheap guide during training. Check that the relation holds for your tasks.",
        ["dltips.MetricTracker", "dltips.check_emergent_scaling", "dltips.doctor"],
    ),
    Tip(
        "emergent-scaling", "nlp", "info", "Individual tasks do not scale as smoothly as the loss",
        "Loss falls smoothly with compute, but a particular downstream task may plateau, jump, "
        "or even get worse. Track tasks separately across model sizes.",
        ["dltips.scaling_study", "dltips.check_emergent_scaling", "dltips.nlp.emergent.char_probes"],
    ),
    Tip(
        "weight-tying", "nlp", "trick+check", "Tie the input embedding and the output layer",
        "Share one matrix between the token embedding and the output projection: similar tokens "
        "get similar output scores, both uses train the matrix, and a large block of parameters "
        "disappears (in GPT-2 small, 50257 x 768, about a third of the model).",
        ["dltips.tie_weights", "dltips.check_weight_tying"],
    ),
    Tip(
        "unseen-tokens", "nlp", "check", "Tokens never seen in training should get almost no probability",
        "A token that never occurs in the training data should receive a predicted probability "
        "close to zero; mass on unseen tokens signals a bad initialisation or a data leak.",
        ["dltips.check_unseen_tokens", "dltips.nlp.unseen.token_counts"],
    ),
    # Tabular
    Tip(
        "categorical-embedding-size", "tabular", "trick", "Size categorical embeddings by a rule",
        "A good default width for a categorical embedding is min(600, round(1.6 * n ** 0.56)) "
        "for n categories, counting the reserved ones.",
        ["dltips.emb_size", "dltips.emb_sizes", "dltips.check_embedding_sizes", "dltips.TabularModel"],
    ),
    Tip(
        "encode-categoricals", "tabular", "trick+check", "Clean and encode nominal categories",
        "Normalise and merge spelling variants, typos and abbreviations before encoding: they "
        "inflate cardinality and create categories unknown at inference. Group rare values and "
        "keep 'missing' apart from 'unknown'. Word embeddings of category names rarely help.",
        ["dltips.CategoryEncoder", "dltips.check_categoricals"],
    ),
]

TIPS: dict[str, Tip] = {tip.id: tip for tip in _TIPS}


def get_tip(tip_id: str) -> Tip:
    """The tip with this id; a KeyError lists the valid ids."""
    try:
        return TIPS[tip_id]
    except KeyError:
        raise KeyError(f"unknown tip {tip_id!r}; valid ids: {', '.join(TIPS)}") from None


def tips_by_theme(theme: str | None = None) -> list[Tip]:
    """All tips in catalog order, or those of one theme."""
    if theme is not None and theme not in THEMES:
        raise ParamError(f"unknown theme {theme!r}; valid themes: {', '.join(THEMES)}")
    return [tip for tip in _TIPS if theme is None or tip.theme == theme]
