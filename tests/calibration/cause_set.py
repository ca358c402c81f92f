"""The cause calibration set: broken tasks with one known cause each, the tips that must flag them and the
words that name the cause, and healthy tasks that use the same constructions legitimately.

"found": a warn or fail from an expected tip. "cause named": the cause's words (a regular expression,
case-insensitive) in the title or message of a warn/fail finding. "named first": they are in the first
cause the doctor ranks inside a fundamental finding, or in the fundamental finding's own title and message.
"""

from __future__ import annotations

import re
from typing import Callable

import causes_data as cd
import causes_model as cm
from zoo import BROKEN, HEALTHY

from dltips import Task

# name -> (task factory, tips of which one must warn or fail, words naming the cause)
CAUSES: dict[str, tuple[Callable[[], Task], set[str], str]] = {
    # wrong activation of the last layer (Islam 2019; Humbatova 2020; TheDeepChecker)
    "relu-on-logits": (cm.relu_on_logits_task, {"overfit-tiny", "initialization"}, r"bounds the logits"),
    "softmax-regression": (cm.softmax_regression_task, {"overfit-tiny", "initialization"},
                           r"dimension of size 1.*always outputs"),
    "sigmoid-signed-targets": (cm.sigmoid_signed_targets_task, {"overfit-tiny", "initialization"},
                               r"only output values in \[0, 1\]"),
    "tanh-wide-targets": (cm.tanh_wide_targets_task, {"overfit-tiny", "initialization"},
                          r"only output values in \[-1, 1\]"),
    "softmax-before-ce": (BROKEN["softmax-before-ce"][0], {"initialization"}, r"softmax"),
    "log-softmax-dim0": (BROKEN["log-softmax-dim0"][0], {"initialization"}, r"over the batch|dimension 0"),
    # activations and gradient flow (AUTOTRAINER: dying ReLU, vanishing gradient; TheDeepChecker)
    "dead-biases": (cm.dead_biases_task, {"overfit-tiny", "activation-gradient-stats"}, r"outputs zero"),
    "softmax-hidden": (cm.softmax_hidden_task, {"overfit-tiny", "activation-gradient-stats"},
                       r"softmax used as a hidden activation"),
    "deep-sigmoid": (cm.deep_sigmoid_task, {"overfit-tiny", "activation-gradient-stats"}, r"vanishing gradient"),
    # parameters (Humbatova: missing parameters in the optimizer; frozen layers; a detached loss)
    "half-optimized": (cm.half_optimized_task, {"update-ratio", "error-gaps", "overfit-tiny"},
                       r"optimizer does not hold|never updated"),
    "detached-loss": (BROKEN["detached-loss"][0], {"overfit-tiny", "update-ratio"}, r"no gradient reaches"),
    "frozen": (BROKEN["frozen"][0], {"overfit-tiny", "update-ratio"}, r"frozen"),
    # the learning rate (AUTOTRAINER: exploding gradient / oscillating loss, slow convergence)
    "lr-far-too-high": (BROKEN["lr-far-too-high"][0], {"overfit-tiny", "default-lr"}, r"learning rate.{0,20}too high"),
    "lr-far-too-low": (BROKEN["lr-far-too-low"][0], {"overfit-tiny", "default-lr"}, r"learning rate.{0,20}too low"),
    "sum-loss-mean-lr": (cm.sum_loss_mean_lr_task, {"overfit-tiny", "batch-size-lr-scaling", "default-lr"},
                         r"sums over the batch"),
    # initialisation and data scale
    "init-x30": (BROKEN["init-x30"][0], {"initialization"}, r"over-confident"),
    "raw-pixels": (BROKEN["raw-pixels"][0], {"verify-transforms"}, r"unnormalised"),
    # regularisation (Humbatova: wrong dropout rate; a weight decay far too strong)
    "heavy-dropout": (cm.heavy_dropout_task, {"overfit-then-regularize", "error-gaps"}, r"regularisation keeps"),
    "huge-weight-decay": (cm.huge_weight_decay_task, {"overfit-then-regularize", "error-gaps"},
                          r"regularisation keeps"),
    # too good to be true: the label leaks into the inputs
    "label-column": (cm.label_column_task, {"error-gaps"}, r"gives the label away"),
    "label-pixel": (cm.label_pixel_task, {"error-gaps"}, r"gives the label away"),
    "target-column": (cm.target_column_task, {"error-gaps"}, r"gives the label away"),
    # the data's pairing and splits (Islam 2019, Humbatova 2020: wrong data pairing, leakage between splits)
    "shuffled-pairing": (cd.shuffled_pairing_task, {"verify-transforms"}, r"changes as much as another item"),
    "random-label-reads": (cd.random_label_reads_task, {"verify-transforms"}, r"label of an index changes"),
    "leaked-validation": (cd.leaked_validation_task, {"val-test-match"}, r"copies of train"),
    # language models that read the tokens they predict (a dropped causal mask; a bidirectional RNN)
    "unmasked-transformer": (cm.unmasked_transformer_task, {"error-gaps"}, r"sees future tokens"),
    "bidirectional-lstm": (cm.bidirectional_lstm_task, {"error-gaps"}, r"sees future tokens"),
    # labels
    "random-labels": (BROKEN["random-labels"][0], {"error-gaps", "overfit-then-regularize"},
                      r"labels may be shuffled"),
}

CAUSE_HEALTHY: dict[str, Callable[[], Task]] = {
    "sigmoid-unit-targets": cm.sigmoid_unit_targets_task,  # a sigmoid output on targets in [0, 1]
    "bias-path": cm.bias_path_task,  # a learned bias that does not depend on the input
    "shallow-tanh": cm.shallow_tanh_task,  # bounded activations that do not saturate
    "relu-before-linear": HEALTHY["digits-mlp"],  # ReLU hidden layers before a final Linear
    "sum-reduced-loss": HEALTHY["sum-reduced-loss"],  # a sum over items with an LR to match
    "sum-loss-adam": cm.sum_loss_adam_task,  # a sum over items with Adam, which ignores the gradient's scale
    "causal-transformer": HEALTHY["transformer-lm"],
    "lstm-lm": cm.lstm_lm_task,  # a unidirectional recurrent language model
    "bce-probabilities": HEALTHY["bce-probabilities"],  # a sigmoid before BCELoss
    "usual-dropout": cm.usual_dropout_task,  # dropout 0.5 between hidden layers
    "mnist-style": HEALTHY["mnist-style"],  # dropout 0.25 and 0.5, log_softmax, Adadelta
    "augmented-dataset": cd.augmented_dataset_task,  # noise and shifts drawn in __getitem__
}


def cause_named(report, words: str) -> bool:
    pattern = re.compile(words, re.IGNORECASE | re.DOTALL)
    return any(pattern.search(f"{f.title} {f.message}") for f in report.findings if f.status in ("warn", "fail"))


def named_first(report, words: str) -> bool:
    from dltips.diagnosis.causes import FUNDAMENTAL

    pattern = re.compile(words, re.IGNORECASE | re.DOTALL)
    for f in report.findings:
        if f.tip in FUNDAMENTAL and f.status in ("warn", "fail") and "cause" not in f.evidence:
            causes = f.evidence.get("causes") or []
            text = f"{causes[0]['title']} {causes[0]['message']}" if causes else f"{f.title} {f.message}"
            if pattern.search(text):
                return True
    first = next((f for f in report.findings if f.status in ("warn", "fail")), None)
    return first is not None and bool(pattern.search(f"{first.title} {first.message}"))
