"""The tips: the 28 heuristics dltips implements, each with a fixed id.

Each `Tip` names the public objects that implement it (`implemented_by`, dotted
import paths), where the heuristic comes from (`source`, a locator in the seed
text; `citation`, the work behind it) and a short runnable example (`snippet`).
A tip whose implementation is still to come has an empty list; `dltips tips`
says so instead of pretending.

`format_tip` renders one tip for `dltips tips ID`. The signatures, defaults,
docstrings and files it shows are read from the implementing objects
(`inspect`), so that the page cannot drift from the code. It imports those
objects (and so torch) only when called; listing the tips imports nothing.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import re
import reprlib
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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
SEED = "deep-learning-tips-and-tricks"  # the seed text the tips come from; `Tip.source` starts with it
COMMON_CHECK_ARGS = ("model", "device", "seed", "max_items", "deadline")  # every check_* takes these
MAX_DEFAULTS = 8  # defaults shown per object; the rest are counted


@dataclass(frozen=True)
class Tip:
    """One heuristic: its id, theme, kind, advice, implementing objects, origin and an example.

    `source` locates the heuristic in the seed text (theme and a few words);
    `citation` names the paper, book or post behind it, or says it is folklore;
    `snippet` is a short Python program, using dltips's public names, that runs as is.
    """

    id: str
    theme: str
    kind: str
    title: str
    advice: str
    implemented_by: list[str] = field(default_factory=list)
    source: str = ""
    citation: str = ""
    snippet: str = ""

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


# ---------------------------------------------------------------------- reading the implementing objects


def defaults_of(obj: Any) -> dict[str, Any]:
    """The default of every argument of `obj` that has one, in signature order.

    A dataclass gives its init fields' defaults (a `default_factory` is called,
    as the dataclass itself would). `self`, `*args` and `**kwargs` have none.
    """
    if isinstance(obj, type) and dataclasses.is_dataclass(obj):
        return {f.name: _field_default(f) for f in dataclasses.fields(obj) if f.init and _has_default(f)}
    parameters = inspect.signature(obj).parameters.values()
    return {p.name: p.default for p in parameters if p.default is not p.empty and p.name != "self"}


def _has_default(f: dataclasses.Field) -> bool:
    return f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING


def _field_default(f: dataclasses.Field) -> Any:
    return f.default if f.default is not dataclasses.MISSING else f.default_factory()


def is_check(obj: Any) -> bool:
    """Whether `obj` takes all the common check arguments (`COMMON_CHECK_ARGS`) as keywords only."""
    try:
        parameters = inspect.signature(obj).parameters
    except (TypeError, ValueError):
        return False
    return all(name in parameters and parameters[name].kind is inspect.Parameter.KEYWORD_ONLY
               for name in COMMON_CHECK_ARGS)


def shown_defaults(obj: Any) -> dict[str, Any]:
    """The defaults `dltips tips` lists for `obj`: all of them, less the common check arguments of a check."""
    common = COMMON_CHECK_ARGS if is_check(obj) else ()
    return {name: value for name, value in defaults_of(obj).items() if name not in common}


def tip_defaults(tip: Tip) -> dict[str, dict[str, Any]]:
    """Per name in `tip.implemented_by`, the defaults `dltips tips` lists for that object (`shown_defaults`)."""
    return {name: shown_defaults(obj) for name, obj in zip(tip.implemented_by, tip.resolve())}


def source_path(obj: Any) -> str:
    """The file that defines `obj`, relative to the directory holding the package (`dltips/training/schedule.py`)."""
    try:
        found = inspect.getsourcefile(inspect.unwrap(obj))
    except TypeError:
        found = None
    if found is None:
        return "(no source file)"
    path, root = Path(found).resolve(), Path(__file__).resolve().parent.parent
    return path.relative_to(root).as_posix() if path.is_relative_to(root) else str(path)


def summary_line(obj: Any, most: int = 160) -> str:
    """The first sentence of the first paragraph of `obj`'s docstring, at most `most` characters ("" without one).

    A sentence ends at a full stop followed by a capital or a backquote, so "et al. 2017" does not end one.
    """
    paragraph = (inspect.getdoc(obj) or "").split("\n\n")[0]
    text = " ".join(paragraph.split())
    end = re.search(r"\.\s(?=[A-Z`])", text)
    return textwrap.shorten(text if end is None else text[: end.start() + 1], width=most, placeholder=" ...")


def signature_line(name: str, obj: Any, width: int = 88) -> str:
    """`name(arg, key=default, ...) -> result` in at most `width` characters: arguments that do not fit become `...`.

    A check's common arguments are keyword-only, so they move behind its own
    options (the call is the same): clipping drops them first.
    """
    signature = inspect.signature(obj)
    if is_check(obj):
        signature = _common_last(signature)
    tokens = _parameter_tokens(signature)
    result = signature.return_annotation
    tail = "" if result in (signature.empty, None, "None") else f" -> {_annotation_text(result)}"
    for keep in range(len(tokens), 0, -1):
        shown = tokens[:keep] + (["..."] if keep < len(tokens) else [])
        line = f"{name}({', '.join(shown)}){tail}"
        if len(line) <= width:
            return line
    return f"{name}({'...' if tokens else ''}){tail}"


def _common_last(signature: inspect.Signature) -> inspect.Signature:
    """The same signature with the common check arguments after the other keyword-only ones."""
    parameters = list(signature.parameters.values())
    common = [p for p in parameters if p.name in COMMON_CHECK_ARGS]
    rest = [p for p in parameters if p.name not in COMMON_CHECK_ARGS and p.kind is not p.VAR_KEYWORD]
    var_keyword = [p for p in parameters if p.kind is p.VAR_KEYWORD]
    return signature.replace(parameters=rest + common + var_keyword)


def _parameter_tokens(signature: inspect.Signature) -> list[str]:
    """The parameters as written in a def, without annotations, with the `/` and `*` markers."""
    tokens: list[str] = []
    parameters = list(signature.parameters.values())
    starred = any(p.kind is p.VAR_POSITIONAL for p in parameters)
    for i, p in enumerate(parameters):
        if p.kind is p.KEYWORD_ONLY and not starred:
            tokens.append("*")
            starred = True
        prefix = {p.VAR_POSITIONAL: "*", p.VAR_KEYWORD: "**"}.get(p.kind, "")
        tokens.append(prefix + p.name + ("" if p.default is p.empty else "=" + short_repr(p.default)))
        last_positional = i + 1 == len(parameters) or parameters[i + 1].kind is not p.POSITIONAL_ONLY
        if p.kind is p.POSITIONAL_ONLY and last_positional:
            tokens.append("/")
    return tokens


def _annotation_text(annotation: Any) -> str:
    return annotation if isinstance(annotation, str) else inspect.formatannotation(annotation)


def short_repr(value: Any) -> str:
    """A default as it would be written: its repr, clipped; a function or class by its name."""
    if inspect.isfunction(value) or inspect.isclass(value):
        return value.__qualname__
    clipped = reprlib.Repr()
    clipped.maxstring = clipped.maxother = 40
    clipped.maxtuple = clipped.maxlist = 6
    return clipped.repr(value)


# ---------------------------------------------------------------------- rendering one tip


def format_tip(tip: Tip, width: int = 88) -> str:
    """One tip in full, as `dltips tips ID` prints it.

    The advice, where it comes from (source, citation), each implementing object
    (its file, signature and summary), the defaults dltips uses, and a runnable
    example. Everything about the objects is read from them, so importing them
    is part of the call.
    """
    objects = dict(zip(tip.implemented_by, tip.resolve()))
    sections = [
        [f"{tip.id}: {tip.title}", f"theme: {THEME_TITLES[tip.theme]}    kind: {tip.kind}"],
        textwrap.wrap(tip.advice, width=width),
        _labelled("source", tip.source, width) + _labelled("citation", tip.citation, width),
        _objects_section(objects, width),
        _defaults_section(objects, width),
        ["example (runs as is):", *tip.snippet.rstrip("\n").splitlines()] if tip.snippet else [],
    ]
    return "\n\n".join("\n".join(lines) for lines in sections if lines) + "\n"


def _labelled(label: str, text: str, width: int) -> list[str]:
    """`label: text`, wrapped under itself; nothing when `text` is empty."""
    if not text:
        return []
    indent = " " * (len(label) + 2)
    return textwrap.wrap(text, width=width, initial_indent=f"{label}: ", subsequent_indent=indent,
                         break_long_words=False, break_on_hyphens=False)


def _objects_section(objects: dict[str, Any], width: int) -> list[str]:
    """Per implementing object: its dotted name and file, its signature on one line, and its summary."""
    if not objects:
        return ["in dltips: not implemented yet in this version."]
    lines = ["in dltips:"]
    for dotted, obj in objects.items():
        lines.append(f"  {dotted}, in {source_path(obj)}")
        lines.append("    " + signature_line(_short_name(dotted), obj, width - 4))
        lines += textwrap.wrap(summary_line(obj), width=width, initial_indent="    ", subsequent_indent="    ")
    return lines


def _defaults_section(objects: dict[str, Any], width: int) -> list[str]:
    """The defaults each object takes (at most MAX_DEFAULTS each), and once the common check arguments."""
    if not objects:
        return []
    lines = ["defaults (read from the code):"]
    for dotted, obj in objects.items():
        items = [f"{name}={short_repr(value)}" for name, value in shown_defaults(obj).items()]
        if len(items) > MAX_DEFAULTS:
            items = items[:MAX_DEFAULTS] + [f"... ({len(items) - MAX_DEFAULTS} more)"]
        lines += _wrapped_items(f"  {_short_name(dotted)}: ", items or ["none"], width)
    checks = [obj for obj in objects.values() if is_check(obj)]
    if checks:
        common = defaults_of(checks[0])
        shared = ", ".join(f"{name}={short_repr(common[name])}" for name in COMMON_CHECK_ARGS)
        note = f"every check_* also takes {shared}, as all dltips checks do"
        lines += textwrap.wrap(note, width=width, initial_indent="  ", subsequent_indent="    ")
    return lines


def _wrapped_items(prefix: str, items: list[str], width: int) -> list[str]:
    """`prefix` then the items joined by ", ", broken between items (never inside one) at `width`."""
    lines, line = [], prefix
    indent = " " * len(prefix)
    for i, item in enumerate(items):
        piece = item + ("," if i + 1 < len(items) else "")
        if line.strip() and len(line) + len(piece) > width:
            lines.append(line.rstrip())
            line = indent
        line += piece + " "
    lines.append(line.rstrip())
    return lines


def _short_name(dotted: str) -> str:
    return dotted.rsplit(".", 1)[-1]


def _code(text: str) -> str:
    """A snippet written indented inside the catalog, as a program: dedented, one trailing newline."""
    return textwrap.dedent(text).strip("\n") + "\n"


# A tiny classification Task that several snippets start from (three classes with a known rule).
_TINY_TASK = _code("""
    import torch
    from torch import nn
    from torch.utils.data import TensorDataset
    import dltips

    x = torch.randn(96, 8)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0).long()  # three classes with a known rule
    model = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 3))
    task = dltips.Task(model, train=TensorDataset(x[:64], y[:64]), valid=TensorDataset(x[64:], y[64:]))
""")

_TIPS = [
    # General > Training
    Tip(
        "default-lr", "training", "trick", "Start Adam/AdamW at 3e-4; small models tolerate more",
        "For Adam or AdamW and a model of ordinary size, 3e-4 is a learning rate that rarely "
        "fails. Smaller models can take larger steps without diverging, so the default grows as "
        "the parameter count shrinks. A short LR range test confirms the choice on your data.",
        ["dltips.default_lr", "dltips.lr_find", "dltips.check_lr"],
        source="deep-learning-tips-and-tricks, General > Training: 'Learning rate: a good default for Adam/AdamW is 3e-4'",
        citation=(
            "practitioners' default, no single source (Karpathy, 2016, on Twitter: 3e-4 for Adam); Adam: Kingma & "
            "Ba, ICLR 2015; AdamW: Loshchilov & Hutter, ICLR 2019; the range test: Smith, 'Cyclical Learning Rates "
            "for Training Neural Networks', WACV 2017"
        ),
        snippet=_code("""
            import torch
            import torch.nn.functional as F
            import dltips

            model = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.ReLU(), torch.nn.Linear(32, 2))
            lr = dltips.default_lr(model)  # 3e-4 at ordinary size, more for a model this small
            optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
            x = torch.randn(640, 8)
            batches = list(zip(x.split(32), (x[:, 0] > 0).long().split(32)))
            finder = dltips.lr_find(model, optimizer, batches, F.cross_entropy, num_steps=20)  # weights restored after
            print(f"default {lr:.1e}; the range test suggests {finder.suggestion:.1e}")
        """),
    ),
    Tip(
        "overfit-tiny", "training", "check", "Overfit one example, then a few",
        "Before training on everything, make sure the model can drive the loss to nearly zero on "
        "one example and then on a handful. Failing on one example points at the optimisation or "
        "the training code (a wrong loss, detached graph, frozen weights); failing only on several "
        "points at batch-dependent layers or label handling.",
        ["dltips.check_overfit_tiny", "dltips.doctor"],
        source="deep-learning-tips-and-tricks, General > Training: 'Overfit a tiny dataset first'",
        citation=(
            "practitioners' advice; see Karpathy 2019, 'A Recipe for Training Neural Networks', karpathy.github.io "
            "('overfit one batch')"
        ),
        snippet=_TINY_TASK + _code("""
            for finding in dltips.check_overfit_tiny(task, sizes=(1, 2), max_steps=40):
                print(finding.status, finding.title)
        """),
    ),
    Tip(
        "mixup", "training", "trick", "Mixup: train on blends of example pairs",
        "Blend each example with a random partner, x = lam*x_i + (1-lam)*x_j with lam drawn from "
        "Beta(alpha, alpha), and blend their targets the same way. The model learns to behave "
        "linearly between examples instead of memorising them, which makes it more tolerant of "
        "label noise. It works for tabular rows and embeddings too, but needs longer training there.",
        ["dltips.Mixup", "dltips.TabularModel"],
        source="deep-learning-tips-and-tricks, General > Training: 'Mixup: linear combination of 2 random training examples'",
        citation="Zhang, Cisse, Dauphin & Lopez-Paz, 'mixup: Beyond Empirical Risk Minimization', ICLR 2018",
        snippet=_code("""
            import torch
            import torch.nn.functional as F
            import dltips

            mixup = dltips.Mixup(alpha=0.4, n_classes=3)
            x, y = torch.randn(16, 5), torch.randint(0, 3, (16,))
            mixed_x, soft_y = mixup(x, y)  # rows blended with a random partner; soft targets blended alike
            loss = F.cross_entropy(torch.nn.Linear(5, 3)(mixed_x), soft_y)
            print(mixed_x.shape, soft_y[0], loss.item())
        """),
    ),
    Tip(
        "mixed-precision", "training", "trick", "Mixed precision: spend the saved memory on bigger batches",
        "Half-precision activations take about half the memory, so a larger batch fits on the "
        "GPU. A larger batch means fewer steps per epoch: raise the learning rate with the batch "
        "size and train for more epochs to keep the number of updates. With fp16, scale the loss "
        "and unscale the gradients before clipping them.",
        ["dltips.MixedPrecision", "dltips.amp_plan"],
        source="deep-learning-tips-and-tricks, General > Training: 'Mixed precision: increase batch size'",
        citation=(
            "Micikevicius et al., 'Mixed Precision Training', ICLR 2018 (loss scaling); the larger batch and LR: "
            "Goyal et al. 2017, 'Accurate, Large Minibatch SGD: Training ImageNet in 1 Hour', arXiv:1706.02677"
        ),
        snippet=_code("""
            import torch
            import dltips

            model = torch.nn.Linear(8, 2)
            optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
            amp = dltips.MixedPrecision("bf16", device_type="cpu")  # "fp16" adds loss scaling on older GPUs
            with amp.autocast():
                logits = model(torch.randn(4, 8))  # 16-bit activations: about half the memory
                loss = torch.nn.functional.cross_entropy(logits, torch.tensor([0, 1, 0, 1]))
            amp.backward(loss)
            amp.step(optimizer)
            print(logits.dtype, "; twice the batch would take lr", dltips.scale_lr(0.1, 64, 128))
        """),
    ),
    Tip(
        "overfit-then-regularize", "training", "check", "First reach zero training error, then regularise",
        "Check that the model has the capacity to fit the whole training set. If it cannot, the "
        "architecture or the optimisation is at fault and regularisation will not help. Once it "
        "can, close the gap to validation with weight decay, dropout, augmentation or early stopping.",
        ["dltips.check_capacity", "dltips.doctor"],
        source="deep-learning-tips-and-tricks, General > Training: 'Overfit, then regularize'",
        citation=(
            "practitioners' advice; see Karpathy 2019, 'A Recipe for Training Neural Networks', karpathy.github.io "
            "('overfit', then 'regularize'), and Ng, 'Machine Learning Yearning', 2018 (bias before variance)"
        ),
        snippet=_TINY_TASK + _code("""
            for finding in dltips.check_capacity(task, max_steps=200):
                print(finding.status, finding.title)
        """),
    ),
    Tip(
        "batch-size-lr-scaling", "training", "trick", "Scale the learning rate with the batch size",
        "When the batch size changes by a factor k, change the learning rate by k (linear rule) "
        "or by sqrt(k) (a more cautious rule, often better for adaptive optimisers). Count the "
        "effective batch: micro-batch x accumulation steps x number of processes.",
        ["dltips.scale_lr", "dltips.check_loss_reduction"],
        source="deep-learning-tips-and-tricks, General > Training: 'Batch size and learning rate'",
        citation=(
            "linear rule: Goyal et al. 2017, 'Accurate, Large Minibatch SGD', arXiv:1706.02677; square-root rule: "
            "Krizhevsky 2014, 'One weird trick for parallelizing convolutional neural networks', arXiv:1404.5997, "
            "and for adaptive optimisers Malladi et al., 'On the SDEs and Scaling Rules for Adaptive Gradient "
            "Algorithms', NeurIPS 2022"
        ),
        snippet=_code("""
            import dltips

            print(dltips.scale_lr(3e-4, from_batch=32, to_batch=128))               # linear rule: 1.2e-3
            print(dltips.scale_lr(3e-4, from_batch=32, to_batch=128, rule="sqrt"))  # cautious rule: 6e-4
            print(dltips.scale_lr(3e-4, 32, 32, accumulation=4, world_size=2))      # effective batch 32 x 4 x 2
        """),
    ),
    Tip(
        "one-cycle", "training", "trick", "One cycle: short warm-up, long high LR, long cosine anneal",
        "Warm up quickly from a small learning rate, stay high for long to explore, then anneal "
        "for long to a very small rate to settle into a minimum. Move momentum the other way: "
        "low while the rate is high, high while it is low.",
        ["dltips.OneCycle", "dltips.fit"],
        source="deep-learning-tips-and-tricks, General > Training: 'LR schedule - CosineAnnealing1Cycle'",
        citation=(
            "Smith & Topin 2019, 'Super-Convergence: Very Fast Training of Neural Networks Using Large Learning "
            "Rates', arXiv:1708.07120; cyclical momentum: Smith 2018, 'A disciplined approach to neural network "
            "hyper-parameters: Part 1', arXiv:1803.09820; cosine phases as in fastai's fit_one_cycle (Howard & "
            "Gugger, 'fastai: A Layered API for Deep Learning', Information 2020)"
        ),
        snippet=_code("""
            import torch
            import dltips

            model = torch.nn.Linear(4, 1)
            optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
            scheduler = dltips.OneCycle(optimizer, max_lr=0.1, total_steps=20)
            lrs = []
            for _ in range(20):
                optimizer.step()
                lrs.append(optimizer.param_groups[0]["lr"])
                scheduler.step()
            print(f"start {lrs[0]:.4f}, peak {max(lrs):.2f}, end {lrs[-1]:.1e}")
        """),
    ),
    Tip(
        "initialization", "training", "check", "The loss at initialisation should be what the task implies",
        "Weights stay close to their initial values, so initialisation matters. At step zero the "
        "model should be maximally unsure: the loss should be the entropy of the label prior "
        "(ln C for C balanced classes, ln V per token for a language model, the target variance "
        "for mean-squared regression). A much larger loss means over-confident initial outputs.",
        ["dltips.check_initial_loss", "dltips.check_output_layer", "dltips.doctor"],
        source="deep-learning-tips-and-tricks, General > Training: 'Initialization matters deeply'",
        citation=(
            "why the initial scale matters: Glorot & Bengio, AISTATS 2010, and He et al., 'Delving Deep into "
            "Rectifiers', ICCV 2015; the loss to expect at step zero: Karpathy 2019, 'A Recipe for Training Neural "
            "Networks', karpathy.github.io ('verify loss @ init')"
        ),
        snippet=_TINY_TASK + _code("""
            for finding in dltips.check_initial_loss(task) + dltips.check_output_layer(task):
                print(finding.status, finding.title)
        """),
    ),
    # Data
    Tip(
        "worst-predictions", "data", "check", "Look at the worst predictions",
        "Rank examples by loss and look at the confident mistakes (positives scored near 0, "
        "negatives near 1) and at the least confident ones (near 0.5). They expose preprocessing "
        "bugs and wrong labels faster than any aggregate metric.",
        ["dltips.check_worst_predictions", "dltips.doctor"],
        source="deep-learning-tips-and-tricks, Data: 'Inspect worst predictions'",
        citation=(
            "practitioners' advice; see Howard & Gugger, 'Deep Learning for Coders with fastai and PyTorch', "
            "O'Reilly 2020 (top losses); label errors: Northcutt, Jiang & Chuang, 'Confident Learning: Estimating "
            "Uncertainty in Dataset Labels', JAIR 2021"
        ),
        snippet=_TINY_TASK + _code("""
            for finding in dltips.check_worst_predictions(task, top=5):
                print(finding.status, finding.title)
        """),
    ),
    Tip(
        "verify-transforms", "data", "check", "Look at the output of every transform",
        "Before a transform goes into the pipeline, look at what it produces and at the "
        "statistics of what finally reaches the model: a step can destroy what the label depends "
        "on, and inputs can end up unnormalised or normalised twice.",
        ["dltips.check_inputs", "dltips.check_stable_pairing", "dltips.preview", "dltips.doctor"],
        source="deep-learning-tips-and-tricks, Data: 'Verify transformations'",
        citation=(
            "practitioners' advice; see Karpathy 2019, 'A Recipe for Training Neural Networks', karpathy.github.io "
            "('visualize just before the net')"
        ),
        snippet=_code("""
            import torch
            import dltips

            images = [torch.rand(3, 32, 32) for _ in range(2)]
            steps = {"flip": lambda x: x.flip(-1), "normalise": lambda x: (x - 0.5) / 0.25}
            shown = dltips.preview(steps, images)  # give a path to also write the grid as a PNG
            for stats in shown.table()["rows"]:
                print(stats)
        """),
    ),
    Tip(
        "image-resolution", "data", "check", "Experiment at 128 px, not at 32 px",
        "Below roughly 96 x 96 pixels images behave differently, so conclusions drawn on tiny "
        "images often do not carry over to large ones. Around 128 px, experiments are still fast "
        "and their conclusions tend to hold at full size.",
        ["dltips.check_image_resolution", "dltips.doctor"],
        source="deep-learning-tips-and-tricks, Data: 'Image resolution matters'",
        citation=(
            "practitioners' advice from the fast.ai course, no single paper; see Howard & Gugger, 'Deep Learning "
            "for Coders with fastai and PyTorch', O'Reilly 2020 (small images, progressive resizing), and Touvron "
            "et al., 'Fixing the train-test resolution discrepancy', NeurIPS 2019"
        ),
        snippet=_code("""
            import torch
            from torch import nn
            from torch.utils.data import TensorDataset
            import dltips

            x, y = torch.rand(40, 3, 32, 32), torch.randint(0, 2, (40,))
            model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 2))
            task = dltips.Task(model, train=TensorDataset(x[:32], y[:32]), valid=TensorDataset(x[32:], y[32:]))
            for finding in dltips.check_image_resolution(task, target_size=224):
                print(finding.status, finding.title)
        """),
    ),
    Tip(
        "toy-problems", "data", "trick", "Build small problems with known answers",
        "Small, fast datasets with a known answer let you test an idea or a pipeline in seconds. "
        "Keep one or two that resemble your real problem.",
        ["dltips.data.toys.spirals", "dltips.data.toys.moons", "dltips.data.toys.shapes",
         "dltips.data.toys.copy_sequence", "dltips.data.toys.reverse_sequence", "dltips.data.toys.messy_categories"],
        source="deep-learning-tips-and-tricks, Data: 'Create toy problems'",
        citation=(
            "practitioners' advice, no single source; see Howard & Gugger, 'Deep Learning for Coders with fastai "
            "and PyTorch', O'Reilly 2020 (small datasets to iterate quickly)"
        ),
        snippet=_code("""
            from dltips.data import toys

            toy = toys.spirals(n=300, arms=3)  # also moons, shapes, copy_sequence, reverse_sequence, messy_categories
            print(toy.name, len(toy.train), "training items; its model reaches", toy.expected, "against", round(toy.baseline, 2))
            task = toy.task()  # a dltips.Task, ready for dltips.fit or dltips.doctor
            print(task.kind, task.n_classes)
        """),
    ),
    Tip(
        "label-preserving-augmentation", "data", "check", "Augment only in ways that keep the label",
        "Any data can be augmented as long as the label stays (almost) the same. Check that the "
        "augmented examples still make sense and that their labels still hold.",
        ["dltips.check_label_preserving", "dltips.doctor"],
        source="deep-learning-tips-and-tricks, Data: 'Augmentation: ... as long as the label would almost not change'",
        citation=(
            "Shorten & Khoshgoftaar, 'A survey on Image Data Augmentation for Deep Learning', Journal of Big Data "
            "2019 (whether a transform is safe: keeps the label)"
        ),
        snippet=_code("""
            import torch
            from torch import nn
            from torch.utils.data import TensorDataset
            import dltips

            x, y = torch.rand(48, 1, 8, 8), torch.randint(0, 2, (48,))
            model = nn.Sequential(nn.Flatten(), nn.Linear(64, 2))
            task = dltips.Task(model, train=TensorDataset(x[:32], y[:32]), valid=TensorDataset(x[32:], y[32:]))
            transforms = {"flip": lambda b: b.flip(-1), "rot180": lambda b: b.rot90(2, (-2, -1))}
            for finding in dltips.check_label_preserving(task, transforms=transforms):  # pass your trained model=
                print(finding.status, finding.title)
        """),
    ),
    Tip(
        "augmentation-invariances", "data", "info", "Augmentation teaches invariances, not new facts",
        "Augmentation adds no information: it shows the same distribution from other angles, "
        "making an invariance you already know (a flipped cat is a cat) explicit so that the "
        "model does not have to discover it from data.",
        ["dltips.describe_invariances", "dltips.doctor"],
        source="deep-learning-tips-and-tricks, Data: 'Augmentation encodes invariances, not information'",
        citation="Chen, Dobriban & Lee, 'A Group-Theoretic Framework for Data Augmentation', JMLR 2020",
        snippet=_code("""
            import dltips

            augment = [dltips.AffineAugment(size=64, max_rotate=15), dltips.Lighting(brightness=0.1)]
            for finding in dltips.describe_invariances(augment):
                print(finding.message)
        """),
    ),
    Tip(
        "compose-augmentations", "data", "trick", "Compose geometric transforms into one resample",
        "Every resample blurs the image a little, and chained rotate/zoom/crop steps compound the "
        "loss. Resize large once, then fold all geometric steps and the final resize into a "
        "single warp applied on the accelerator.",
        ["dltips.AffineAugment", "dltips.Lighting", "dltips.presize"],
        source="deep-learning-tips-and-tricks, Data: 'Compose augmentation transforms'",
        citation=(
            "fastai's composed batch transforms and presizing: Howard & Gugger, 'fastai: A Layered API for Deep "
            "Learning', Information 2020, and 'Deep Learning for Coders with fastai and PyTorch', O'Reilly 2020, "
            "chapter 5"
        ),
        snippet=_code("""
            import torch
            import dltips

            images = dltips.presize(torch.rand(4, 3, 120, 160), 96)  # resize large once
            augment = dltips.AffineAugment(size=64, max_rotate=10, zoom=(1.0, 1.2))
            lighting = dltips.Lighting(brightness=0.1)
            out = lighting(augment(images))  # every geometric step and the resize in one resample
            print(images.shape, "->", out.shape)
        """),
    ),
    Tip(
        "val-test-match", "data", "check", "Validation and test must come from the same distribution",
        "Training data may differ from what the model meets in use, but validation and test must "
        "match each other: validation is only useful as a stand-in for the test.",
        ["dltips.check_val_test_match", "dltips.check_split_overlap", "dltips.doctor"],
        source="deep-learning-tips-and-tricks, Data: 'Distribution mismatch rule'",
        citation="Ng, 'Machine Learning Yearning', 2018 (dev and test sets from the same distribution)",
        snippet=_code("""
            import torch
            from torch import nn
            from torch.utils.data import TensorDataset
            import dltips

            x, y = torch.randn(120, 4), torch.randint(0, 2, (120,))
            parts = [TensorDataset(x[i:i + 40], y[i:i + 40]) for i in (0, 40, 80)]
            task = dltips.Task(nn.Linear(4, 2), train=parts[0], valid=parts[1], test=parts[2])
            for finding in dltips.check_val_test_match(task, folds=2, permutations=20) + dltips.check_split_overlap(task):
                print(finding.status, finding.title)
        """),
    ),
    # Monitoring & Debugging
    Tip(
        "activation-gradient-stats", "monitoring", "monitor", "Watch activation and gradient distributions",
        "Per layer, watch histograms of activations and gradients and the share of saturated or "
        "dead units. Saturated activations with near-zero gradients mean the layer has stopped learning.",
        ["dltips.watch", "dltips.Watch", "dltips.check_gradient_flow", "dltips.doctor"],
        source="deep-learning-tips-and-tricks, Monitoring & Debugging: 'Activation and gradient distributions'",
        citation=(
            "saturation: Glorot & Bengio, 'Understanding the difficulty of training deep feedforward neural "
            "networks', AISTATS 2010; per-layer histograms: Karpathy 2022, 'Building makemore Part 3: Activations & "
            "Gradients, BatchNorm' (lecture)"
        ),
        snippet=_TINY_TASK + _code("""
            for finding in dltips.check_gradient_flow(task):  # dead or saturated layers, vanishing gradients
                print(finding.tip, finding.status, finding.title)
        """),
    ),
    Tip(
        "update-ratio", "monitoring", "monitor", "Keep the update-to-weight ratio near 1e-2",
        "Compare the size of each update with the size of the weights it changes. Around 1e-2 is "
        "healthy; near 1e-5 the layer is not learning, near 0.5 it moves too fast. Adjust the "
        "learning rate to bring layers into the band.",
        ["dltips.watch", "dltips.Watch", "dltips.check_gradient_flow", "dltips.doctor"],
        source="deep-learning-tips-and-tricks, Monitoring & Debugging: 'Update-to-parameter ratio'",
        citation=(
            "practitioners' rule of thumb: Karpathy, CS231n notes 'Neural Networks Part 3', cs231n.github.io (about "
            "1e-3), and 'Building makemore Part 3' (2022); the 1e-2 target follows the source text"
        ),
        snippet=_code("""
            import torch
            import torch.nn.functional as F
            import dltips

            model = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.Tanh(), torch.nn.Linear(32, 2))
            optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
            with dltips.watch(model, optimizer, every=5) as w:  # norm(update) / norm(weights) per layer
                for x, y in [(torch.randn(16, 8), torch.randint(0, 2, (16,))) for _ in range(20)]:
                    optimizer.zero_grad()
                    F.cross_entropy(model(x), y).backward()
                    optimizer.step()
            print([(f.tip, f.status, f.title) for f in w.findings()])
        """),
    ),
    Tip(
        "error-gaps", "monitoring", "check", "Read the three error gaps",
        "Training error shows bias (underfitting); the validation-training gap shows variance "
        "(overfitting); the test-validation gap shows overfitting to the validation set, usually "
        "from too much tuning against it.",
        ["dltips.check_error_gaps", "dltips.monitor.gaps.measure_error_gaps", "dltips.check_target_leak",
         "dltips.check_causal_leak", "dltips.doctor"],
        source="deep-learning-tips-and-tricks, Monitoring & Debugging: 'Three error gaps'",
        citation=(
            "Ng, 'Machine Learning Yearning', 2018, and 'Nuts and Bolts of Building AI Applications Using Deep "
            "Learning', NIPS 2016 tutorial (bias, variance, overfitting the dev set)"
        ),
        snippet=_code("""
            import torch
            from torch import nn
            from torch.utils.data import TensorDataset
            import dltips

            x, y = torch.randn(120, 4), torch.randint(0, 2, (120,))
            parts = [TensorDataset(x[i:i + 40], y[i:i + 40]) for i in (0, 40, 80)]
            task = dltips.Task(nn.Linear(4, 2), train=parts[0], valid=parts[1], test=parts[2])
            for finding in dltips.check_error_gaps(task):  # pass the model you trained as model=
                print(finding.status, finding.title)
        """),
    ),
    Tip(
        "metric-divergence", "monitoring", "monitor", "Metrics agree early and diverge later",
        "Early on most metrics improve together; later they pull apart (precision against "
        "recall, RMSE against MAPE). Optimise the metric that matches your objective and keep the "
        "others as guardrails.",
        ["dltips.MetricTracker", "dltips.evaluate", "dltips.doctor"],
        source="deep-learning-tips-and-tricks, Monitoring & Debugging: 'Metrics diverge during training'",
        citation=(
            "practitioners' advice, no single source; one metric to optimise and the others as constraints: Ng, "
            "'Machine Learning Yearning', 2018 ('optimizing and satisficing metrics')"
        ),
        snippet=_code("""
            import dltips

            tracker = dltips.MetricTracker(objective="valid_balanced_accuracy")  # or dltips.fit(..., callbacks=[tracker])
            for step in range(1, 11):
                recall_of_rare = min(step, 11 - step) / 6  # rises, then falls while accuracy keeps rising
                tracker.record(100 * step, {"valid_loss": 1.5 / step, "valid_accuracy": 0.6 + 0.03 * step,
                                            "valid_balanced_accuracy": 0.4 + 0.3 * recall_of_rare}, n_items=2000)
            for finding in tracker.findings():
                print(finding.tip, finding.status, finding.title)
        """),
    ),
    # Efficiency
    Tip(
        "gradient-accumulation", "efficiency", "trick", "Accumulate gradients to train a large batch in small pieces",
        "When a batch does not fit in memory, split it into micro-batches, back-propagate each "
        "and step the optimizer once per window. Normalised by the items in the whole window, "
        "the gradient equals the large batch's, except for layers that depend on the batch in "
        "the forward pass such as BatchNorm.",
        ["dltips.GradientAccumulator", "dltips.fit"],
        source="deep-learning-tips-and-tricks, Efficiency: 'Gradient accumulation'",
        citation=(
            "standard practice, no single source; normalising over the whole window: Hugging Face blog, 'Fixing "
            "Gradient Accumulation', 2024; the BatchNorm caveat: Ioffe & Szegedy, 'Batch Normalization', ICML 2015"
        ),
        snippet=_code("""
            import torch
            import torch.nn.functional as F
            import dltips

            model = torch.nn.Linear(8, 2)
            optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
            accumulator = dltips.GradientAccumulator(model, optimizer, window=4)
            x, y = torch.randn(32, 8), torch.randint(0, 2, (32,))
            for i, (xb, yb) in enumerate(zip(x.split(8), y.split(8))):
                with accumulator.micro_batch(n_items=len(yb), last=(i == 3)):
                    accumulator.backward(F.cross_entropy(model(xb), yb, reduction="sum"))
                print(i, "stepped" if accumulator.stepped else "accumulated")
        """),
    ),
    # NLP
    Tip(
        "compute-scaling", "nlp", "trick", "Trade parameters against tokens for a compute budget",
        "Training compute is about 6 x parameters x tokens. For a fixed budget you can grow the "
        "model or train it on more tokens; published fits give the compute-optimal balance "
        "(about 20 tokens per parameter).",
        ["dltips.compute_budget", "dltips.flops_per_token", "dltips.mfu"],
        source="deep-learning-tips-and-tricks, NLP: 'Compute scaling'",
        citation=(
            "Kaplan et al., 'Scaling Laws for Neural Language Models', arXiv:2001.08361, 2020 (C = 6ND); Hoffmann "
            "et al., 'Training Compute-Optimal Large Language Models', NeurIPS 2022 (about 20 tokens per "
            "parameter); Besiroglu et al., 'Chinchilla Scaling: A replication attempt', arXiv:2404.10102, 2024"
        ),
        snippet=_code("""
            import torch
            import dltips

            print(dltips.compute_budget(params="124M", tokens="10B"))  # C = 6 N D
            print(dltips.compute_budget(flops=1e21))  # the compute-optimal split for this budget
            model = torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.ReLU(), torch.nn.Linear(256, 64))
            per_token = dltips.flops_per_token(model, seq_len=128, include_attention=False)
            print(per_token.per_token, "FLOPs per token; MFU", dltips.mfu(per_token, tokens_per_s=2e5, peak_flops=1e13))
        """),
    ),
    Tip(
        "logloss-downstream", "nlp", "monitor", "Validation log-loss tracks downstream quality",
        "For language models, lower validation log-loss goes with better downstream results, so "
        "it is a cheap guide during training. Check that the relation holds for your tasks.",
        ["dltips.MetricTracker", "dltips.check_emergent_scaling", "dltips.doctor"],
        source="deep-learning-tips-and-tricks, NLP: 'Logloss predicts downstream performance'",
        citation=(
            "Kaplan et al., 'Scaling Laws for Neural Language Models', arXiv:2001.08361, 2020; Du et al., "
            "'Understanding Emergent Abilities of Language Models from the Loss Perspective', NeurIPS 2024"
        ),
        snippet=_code("""
            import dltips

            tracker = dltips.MetricTracker(objective="valid_accuracy")
            for step in range(1, 11):
                tracker.record(100 * step, {"valid_loss": 2.0 / step ** 0.5, "valid_accuracy": 0.3 + 0.05 * step}, n_items=5000)
            loss_finding = tracker.findings()[1]  # how well the validation loss ranks checkpoints like the objective
            print(loss_finding.tip, loss_finding.status, loss_finding.title)
        """),
    ),
    Tip(
        "emergent-scaling", "nlp", "info", "Individual tasks do not scale as smoothly as the loss",
        "Loss falls smoothly with compute, but a particular downstream task may plateau, jump, "
        "or even get worse. Track tasks separately across model sizes.",
        ["dltips.scaling_study", "dltips.check_emergent_scaling", "dltips.nlp.emergent.char_probes"],
        source="deep-learning-tips-and-tricks, NLP: 'Emergent task scaling'",
        citation=(
            "Wei et al., 'Emergent Abilities of Large Language Models', TMLR 2022; McKenzie et al., 'Inverse "
            "Scaling: When Bigger Isn't Better', TMLR 2023; Schaeffer, Miranda & Koyejo, 'Are Emergent Abilities of "
            "Large Language Models a Mirage?', NeurIPS 2023"
        ),
        snippet=_code("""
            import dltips
            from dltips.nlp.emergent import ScalingPoint

            runs = [("small", 1e5, 2.0, 0.10), ("medium", 1e6, 1.7, 0.11), ("large", 1e7, 1.4, 0.45)]
            points = [ScalingPoint(size, params=int(n), tokens=10**6, flops=6 * n * 1e6, valid_loss=loss,
                                   scores={"keyword": score}, totals={"keyword": 400}) for size, n, loss, score in runs]
            for finding in dltips.check_emergent_scaling(points):  # scaling_study(...) trains and measures the sizes
                print(finding.tip, finding.status, finding.title)
        """),
    ),
    Tip(
        "weight-tying", "nlp", "trick+check", "Tie the input embedding and the output layer",
        "Share one matrix between the token embedding and the output projection: similar tokens "
        "get similar output scores, both uses train the matrix, and a large block of parameters "
        "disappears (in GPT-2 small, 50257 x 768, about a third of the model).",
        ["dltips.tie_weights", "dltips.check_weight_tying"],
        source="deep-learning-tips-and-tricks, NLP: 'Weight sharing: tie the token embedding and the final linear layer'",
        citation=(
            "Press & Wolf, 'Using the Output Embedding to Improve Language Models', EACL 2017; Inan, Khosravi & "
            "Socher, 'Tying Word Vectors and Word Classifiers', ICLR 2017; GPT-2: Radford et al. 2019"
        ),
        snippet=_code("""
            from torch import nn
            import dltips

            model = nn.Sequential(nn.Embedding(100, 16), nn.Linear(16, 100, bias=False))
            print([f.title for f in dltips.check_weight_tying(model)])
            dltips.tie_weights(model[0], model[1])
            print([f.title for f in dltips.check_weight_tying(model)])
        """),
    ),
    Tip(
        "unseen-tokens", "nlp", "check", "Tokens never seen in training should get almost no probability",
        "A token that never occurs in the training data should receive a predicted probability "
        "close to zero; mass on unseen tokens signals a bad initialisation or a data leak.",
        ["dltips.check_unseen_tokens", "dltips.nlp.unseen.token_counts"],
        source="deep-learning-tips-and-tricks, NLP: 'OOV token handling'",
        citation=(
            "practitioners' advice, no single source; related: Land & Bartolo, 'Fishing for Magikarp: Automatically "
            "Detecting Under-trained Tokens in Large Language Models', EMNLP 2024"
        ),
        snippet=_code("""
            import torch
            from torch import nn
            from torch.utils.data import TensorDataset
            import dltips

            tokens = torch.randint(0, 20, (40, 9))  # ids 20..23 of the vocabulary never occur
            data = TensorDataset(tokens[:, :-1], tokens[:, 1:])
            model = nn.Sequential(nn.Embedding(24, 16), nn.Linear(16, 24))
            task = dltips.Task(model, train=data, valid=data, kind="language-model")
            for finding in dltips.check_unseen_tokens(task):  # pass your trained model=
                print(finding.status, finding.title)
        """),
    ),
    # Tabular
    Tip(
        "categorical-embedding-size", "tabular", "trick", "Size categorical embeddings by a rule",
        "A good default width for a categorical embedding is min(600, round(1.6 * n ** 0.56)) "
        "for n categories, counting the reserved ones.",
        ["dltips.emb_size", "dltips.emb_sizes", "dltips.check_embedding_sizes", "dltips.TabularModel"],
        source="deep-learning-tips-and-tricks, Tabular: 'Embedding size for categoricals (fastai rule of thumb)'",
        citation=(
            "fastai's emb_sz_rule, an empirical rule of thumb (Howard & Gugger, 'fastai: A Layered API for Deep "
            "Learning', Information 2020); entity embeddings: Guo & Berkhahn, 'Entity Embeddings of Categorical "
            "Variables', arXiv:1604.06737, 2016"
        ),
        snippet=_code("""
            import dltips

            print({n: dltips.emb_size(n) for n in (2, 10, 100, 1000, 100_000)})
            sizes = dltips.emb_sizes({"city": 120, "weekday": 8})  # {column: (n_categories, width)}
            model = dltips.TabularModel(sizes, n_continuous=3, out_features=1)
            print(sizes, sum(p.numel() for p in model.parameters()), "parameters")
        """),
    ),
    Tip(
        "encode-categoricals", "tabular", "trick+check", "Clean and encode nominal categories",
        "Normalise and merge spelling variants, typos and abbreviations before encoding: they "
        "inflate cardinality and create categories unknown at inference. Group rare values and "
        "keep 'missing' apart from 'unknown'. Word embeddings of category names rarely help.",
        ["dltips.CategoryEncoder", "dltips.check_categoricals"],
        source="deep-learning-tips-and-tricks, Tabular: 'Encode nominal categoricals'",
        citation=(
            "Cerda, Varoquaux & Kegl, 'Similarity encoding for learning with dirty categorical variables', Machine "
            "Learning 2018; Cerda & Varoquaux, 'Encoding high-cardinality string categorical variables', IEEE TKDE "
            "2020"
        ),
        snippet=_code("""
            import dltips

            train = {"street": ["Main Street", "main street ", "Mian Street", "Oak Avenue", "oak avenue", "Elm Road"]}
            encoder = dltips.CategoryEncoder().fit(train)
            print(encoder.transform({"street": ["MAIN STREET", "Pine Lane", None]}))  # merged, unknown (1), missing (0)
            for merge in encoder.merge_records():  # encoder.merges: the same as an editable DataFrame
                print(merge["raw"], "->", merge["canonical"], merge["reason"])
            for finding in dltips.check_categoricals(train):
                print(finding.status, finding.title)
        """),
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
