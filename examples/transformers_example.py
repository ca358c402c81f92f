"""dltips in the Hugging Face Trainer: a tiny GPT-2 learns to count, watched by `DltipsCallback`.

Runs on the CPU in a few seconds; needs `pip install "dltips[transformers]"`. The
model is built from a config (nothing is downloaded) and the data are synthetic:
sequences counting up modulo the vocabulary from random starts. Each evaluation
reports the loss and the next-token accuracy, which dltips reads as valid_loss
and valid_accuracy. The report is printed and written to transformers_report.html.

    python examples/transformers_example.py
"""

from __future__ import annotations

import tempfile

import torch
from transformers import EvalPrediction, GPT2Config, GPT2LMHeadModel, Trainer, TrainingArguments

from dltips.integrations.transformers import DltipsCallback

VOCAB, LENGTH = 64, 16


class Counting(torch.utils.data.Dataset):
    """Token sequences start, start + 1, ... (mod VOCAB); the Trainer's causal-LM labels are the inputs."""

    def __init__(self, n: int, seed: int = 0):
        self.starts = torch.randint(0, VOCAB, (n,), generator=torch.Generator().manual_seed(seed))

    def __len__(self) -> int:
        return len(self.starts)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        ids = (self.starts[i] + torch.arange(LENGTH)) % VOCAB
        return {"input_ids": ids, "labels": ids.clone()}


def next_token_predictions(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The predicted token at each position (kept instead of the logits during evaluation)."""
    return logits.argmax(dim=-1)


def token_accuracy(prediction: EvalPrediction) -> dict[str, float]:
    """The share of next tokens predicted right: reported as eval_accuracy, read by dltips as valid_accuracy."""
    predicted, labels = prediction.predictions[:, :-1], prediction.label_ids[:, 1:]
    counted = labels != -100
    return {"accuracy": float((predicted == labels)[counted].mean())}


def main() -> None:
    torch.manual_seed(0)
    config = GPT2Config(n_layer=2, n_head=2, n_embd=32, vocab_size=VOCAB, n_positions=LENGTH,
                        bos_token_id=0, eos_token_id=0)
    model = GPT2LMHeadModel(config)
    callback = DltipsCallback(every=10, html="transformers_report.html")
    with tempfile.TemporaryDirectory() as out:
        args = TrainingArguments(output_dir=out, max_steps=100, per_device_train_batch_size=16,
                                 gradient_accumulation_steps=2, learning_rate=3e-3, logging_steps=25,
                                 eval_strategy="steps", eval_steps=10, save_strategy="no", report_to=[],
                                 use_cpu=True, disable_tqdm=True, seed=0)
        trainer = Trainer(model=model, args=args, train_dataset=Counting(3200),
                          eval_dataset=Counting(128, seed=1), compute_metrics=token_accuracy,
                          preprocess_logits_for_metrics=next_token_predictions, callbacks=[callback])
        with callback:  # removes the hooks even if training raises
            trainer.train()
    print(f"\nLoss of the last optimizer step (token-weighted over its window): {float(callback.last_loss):.3f}")
    print("Report written to transformers_report.html")


if __name__ == "__main__":
    main()
