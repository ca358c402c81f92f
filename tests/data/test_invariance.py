import json
import math

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from dltips.core.params import ParamError
from dltips.data.augment import AffineAugment, Lighting
from dltips.data.invariance import MIN_DROP, MIN_Z, check_label_preserving, describe_invariances
from dltips.diagnosis.report import Report
from dltips.task import Task

pytestmark = pytest.mark.usefixtures("one_thread")


# ----------------------------------------------------------------------------- controlled cases


def fixed_linear(n_features: int) -> nn.Linear:
    """A linear layer whose logits are the inputs: the prediction is the largest feature."""
    layer = nn.Linear(n_features, n_features)
    with torch.no_grad():
        layer.weight.copy_(torch.eye(n_features))
        layer.bias.zero_()
    return layer


def class_task(counts, batch_size=64, **kw):
    """Items of class c have feature c at 1 and the others at 0 (in class order)."""
    y = torch.cat([torch.full((k,), c) for c, k in enumerate(counts)])
    x = torch.nn.functional.one_hot(y, len(counts)).float()
    data = TensorDataset(x, y)
    return Task(fixed_linear(len(counts)), data, data, batch_size=batch_size, **kw), y.numpy()


def swap01(x):
    """Swaps features 0 and 1: items of classes 0 and 1 are predicted as each other."""
    return x[:, [1, 0, *range(2, x.shape[1])]]


def paired(before_right, after_right):
    d = np.asarray(before_right, float) - np.asarray(after_right, float)
    return d.mean(), d.std(ddof=1) / np.sqrt(len(d))


def test_swapping_two_classes_gives_the_exact_numbers_and_a_warning():
    task, y = class_task([30, 20, 40])
    (f,) = check_label_preserving(task, model=task.model, transforms={"swap": swap01})
    e = f.evidence
    assert f.tip == "label-preserving-augmentation" and f.status == "warn"
    assert e["n_items"] == 90 and e["transform"] == "swap"
    assert e["flip_rate"] == pytest.approx(50 / 90)
    assert e["accuracy"] == 1.0 and e["accuracy_transformed"] == pytest.approx(40 / 90)
    drop, se = paired(np.ones(90), y == 2)
    assert e["drop"] == pytest.approx(drop) and e["drop_se"] == pytest.approx(se)
    assert e["drop_z"] == pytest.approx(drop / se)
    per_class = {r["class"]: r for r in e["per_class"]}
    assert per_class[0]["accuracy_transformed"] == 0 and per_class[2]["accuracy_transformed"] == 1
    assert per_class[1]["n"] == 20 and per_class[1]["flip_rate"] == 1
    assert e["confusions"] == [{"true": 0, "predicted": 1, "n": 30, "share": 1.0},
                               {"true": 1, "predicted": 0, "n": 20, "share": 1.0}]
    (table,) = f.figures  # inputs are not images: no images figure
    assert table["kind"] == "table" and table["rows"] == [[0, 1, 30, 1.0], [1, 0, 20, 1.0]]
    assert "'swap'" in f.message and "55.6%" in f.message and "0 -> 1 (30)" in f.message
    assert "swap" in f.fix
    json.loads(Report(task={}, findings=[f]).to_json())


def test_items_wrong_before_the_transform_are_paired_and_create_no_confusion():
    task, y = class_task([20, 20, 20])
    x = task.valid.tensors[0].clone()
    x[:5] = torch.tensor([0.0, 0.0, 1.0])  # class 0 labelled, predicted 2 before and after the swap
    x[5:8] = torch.tensor([0.0, 1.0, 0.0])  # class 0 labelled, predicted 1 before, 0 (right) after
    data = TensorDataset(x, torch.as_tensor(y))
    task = Task(task.model, data, data)
    (f,) = check_label_preserving(task, model=task.model, transforms={"swap": swap01})
    pred = x.argmax(1).numpy()
    pred_after = swap01(x).argmax(1).numpy()
    drop, se = paired(pred == y, pred_after == y)
    assert f.evidence["drop"] == pytest.approx(drop) and f.evidence["drop_se"] == pytest.approx(se)
    assert f.evidence["flip_rate"] == pytest.approx(np.mean(pred != pred_after))
    assert f.evidence["confusions"] == [{"true": 1, "predicted": 0, "n": 20, "share": 1.0},
                                        {"true": 0, "predicted": 1, "n": 12, "share": 0.6}]


def test_identity_passes_with_zero_drop_and_no_confusions():
    task, _ = class_task([30, 20, 40])
    (f,) = check_label_preserving(task, model=task.model, transforms={"identity": lambda x: x})
    assert f.status == "pass" and f.fix is None
    e = f.evidence
    assert e["flip_rate"] == 0 and e["drop"] == 0 and e["drop_z"] == 0 and e["confusions"] == []
    assert f.figures[0]["rows"] == []


def test_the_model_runs_in_eval_mode_and_gets_its_mode_back():
    task, _ = class_task([30, 20, 40])
    model = nn.Sequential(task.model, nn.Dropout(0.9)).train()  # in training mode, dropout scrambles predictions
    (f,) = check_label_preserving(task, model=model, transforms={"identity": lambda x: x})
    assert f.evidence["flip_rate"] == 0 and f.evidence["accuracy"] == 1
    assert model.training and model[1].training


def test_a_large_drop_on_few_items_passes_for_lack_of_evidence():
    task, y = class_task([1, 1, 8])
    (f,) = check_label_preserving(task, model=task.model, transforms={"swap": swap01})
    drop, se = paired(np.ones(10), y == 2)
    assert drop >= MIN_DROP and drop / se < MIN_Z  # the case tests the standard-error condition
    assert f.evidence["drop"] == pytest.approx(drop) and f.status == "pass"


def test_a_small_but_certain_drop_passes():
    task, y = class_task([20, 20, 960], batch_size=256)
    (f,) = check_label_preserving(task, model=task.model, transforms={"swap": swap01})
    drop, se = paired(np.ones(1000), y == 2)
    assert drop < MIN_DROP and drop / se >= MIN_Z  # the case tests the absolute condition
    assert f.evidence["drop_z"] == pytest.approx(drop / se) and f.status == "pass"


def test_max_items_takes_evenly_spaced_items():
    task, _ = class_task([30, 20, 40])
    (f,) = check_label_preserving(task, model=task.model, transforms={"swap": swap01}, max_items=10)
    assert f.evidence["n_items"] == 10
    # positions round(i * 89 / 9): 0, 10, 20 (class 0), 30, 40, 49 (class 1), 59, 69, 79, 89 (class 2)
    assert f.evidence["flip_rate"] == pytest.approx(6 / 10)


def test_binary_task_uses_the_sign_of_the_logit():
    x = torch.linspace(-1, 1, 40).reshape(40, 1)
    y = (x[:, 0] > 0).float()
    layer = nn.Linear(1, 1)
    with torch.no_grad():
        layer.weight.fill_(1.0)
        layer.bias.zero_()
    data = TensorDataset(x, y)
    task = Task(layer, data, data, kind="binary")
    negate, shift = check_label_preserving(task, model=layer, transforms={"negate": lambda b: -b, "shift": lambda b: b + 0.03})
    assert negate.status == "warn" and negate.evidence["flip_rate"] == 1 and negate.evidence["drop"] == 1
    # only the item at -1/39 crosses 0 under a shift of 0.03
    assert shift.status == "pass" and shift.evidence["flip_rate"] == pytest.approx(1 / 40)


# ----------------------------------------------------------------------------- images, modes and randomness


class LeftRight(nn.Module):
    """Class 0 when the left half of a (1, 4, 4) image is brighter, else class 1."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(()))  # a parameter, so that the device can be read

    def forward(self, x):
        left, right = x[..., :2].sum((1, 2, 3)), x[..., 2:].sum((1, 2, 3))
        return torch.stack([left - right, right - left], dim=1) + 0 * self.w


def image_task(n=20, **kw):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(n, 1, 4, 4, generator=g) * 0.1
    y = torch.arange(n) % 2
    x[y == 0, :, :, 0] += 1.0
    x[y == 1, :, :, 3] += 1.0
    data = TensorDataset(x, y)
    return Task(LeftRight(), data, data, **kw)


def mirror_augment(p=1.0, generator=None):
    return AffineAugment(size=(4, 4), flip=p, max_rotate=0.0, zoom=(1, 1), max_translate=0.0, max_warp=0.0,
                         generator=generator)


def test_module_transform_runs_in_training_mode_and_modes_are_restored():
    aug = mirror_augment().eval()
    task = image_task(augment=aug)
    task.model.train()
    (f,) = check_label_preserving(task, model=task.model)  # default: the task's augmentation
    assert f.evidence["transform"] == "augment"
    assert f.evidence["flip_rate"] == 1.0 and f.status == "warn"  # in eval mode it would only resize
    assert not aug.training and task.model.training
    images = f.figures[1]
    assert images["kind"] == "images" and len(images["images"]) == 16 and len(images["captions"]) == 16
    np.testing.assert_allclose(images["images"][1], images["images"][0][:, ::-1], atol=1e-5)
    assert images["captions"][1] == "augment: p=1"


def test_global_rng_is_seeded_and_restored():
    def random_mirror(x):
        flip = torch.rand(len(x)) < 0.5
        return torch.where(flip[:, None, None, None], x.flip(-1), x)

    task = image_task(n=40, batch_size=64)
    torch.manual_seed(123)
    state = torch.get_rng_state()
    (f,) = check_label_preserving(task, model=task.model, transforms={"random": random_mirror}, seed=7)
    assert torch.equal(torch.get_rng_state(), state)
    torch.manual_seed(7)
    expected = (torch.rand(40) < 0.5).double().mean().item()
    assert f.evidence["flip_rate"] == pytest.approx(expected)
    (again,) = check_label_preserving(task, model=task.model, transforms={"random": random_mirror}, seed=7)
    assert again.evidence == f.evidence
    captions = f.figures[1]["captions"]  # changed predictions are shown first
    assert all(captions[i].split("p=")[1] != captions[i + 1].split("p=")[1] for i in range(0, 16, 2))


def test_a_transform_generator_is_seeded_and_restored():
    g = torch.Generator().manual_seed(99)
    state = g.get_state()
    aug = mirror_augment(p=0.5, generator=g)
    task = image_task(n=40, batch_size=64)
    (f,) = check_label_preserving(task, model=task.model, transforms={"aug": nn.Sequential(aug)}, seed=3)
    assert torch.equal(g.get_state(), state)
    expected = (torch.rand(40, 19, generator=torch.Generator().manual_seed(3), dtype=torch.float64)[:, 0] < 0.5)
    assert f.evidence["flip_rate"] == pytest.approx(expected.double().mean().item())


# ----------------------------------------------------------------------------- bad inputs and skips


def test_bad_transforms_raise_clear_errors():
    task, _ = class_task([5, 5, 5])
    with pytest.raises(TypeError, match=r"transforms\['bad'\] must be a callable"):
        check_label_preserving(task, model=task.model, transforms={"ok": lambda x: x, "bad": 3})
    with pytest.raises(TypeError, match="transforms must be a dict"):
        check_label_preserving(task, model=task.model, transforms=[lambda x: x])
    with pytest.raises(ValueError, match="max_items must be an int >= 1"):
        check_label_preserving(task, model=task.model, transforms={"ok": lambda x: x}, max_items=0)
    with pytest.raises(ParamError, match="max_items"):
        check_label_preserving(task, transforms={"ok": lambda x: x}, max_items="5")


def test_the_old_model_first_form_still_works_and_warns():
    task, _ = class_task([30, 20, 40])
    (new,) = check_label_preserving(task, model=task.model, transforms={"swap": swap01}, max_items=50)
    with pytest.warns(DeprecationWarning, match="check_label_preserving"):
        (old,) = check_label_preserving(task.model, task, {"swap": swap01}, max_items=50)
    assert (old.status, old.message, old.evidence) == (new.status, new.message, new.evidence)
    with pytest.warns(DeprecationWarning, match=r"transforms=\.\.\."):
        (positional,) = check_label_preserving(task, {"swap": swap01}, max_items=50)
    assert positional.evidence == new.evidence


def test_common_arguments_are_taken():
    task, _ = class_task([30, 20, 40])
    (plain,) = check_label_preserving(task, transforms={"swap": swap01})
    (same,) = check_label_preserving(task, transforms={"swap": swap01}, device="auto", seed=0, deadline=60.0)
    assert same.evidence == plain.evidence
    for bad in ({"seed": -1}, {"deadline": "soon"}, {"device": "no-such-device"}, {"model": "net"}):
        with pytest.raises(ParamError, match=next(iter(bad))):
            check_label_preserving(task, transforms={"swap": swap01}, **bad)


def test_incompatible_transforms_give_a_skip_naming_them_and_the_others_still_run():
    task, _ = class_task([5, 5, 5])
    found = check_label_preserving(task, model=task.model, transforms={
        "half": lambda x: x[: len(x) // 2],
        "wide": lambda x: torch.cat([x, x], dim=1),
        "tuple": lambda x: (x,),
        "swap": swap01,
    })
    half, wide, as_tuple, swap = found
    assert half.status == "skip" and "'half'" in half.message and "(7, 3)" in half.message
    assert "keep the number of items" in half.message
    assert wide.status == "skip" and "'wide'" in wide.message and "model fails" in wide.message
    assert as_tuple.status == "skip" and "tuple" in as_tuple.message
    assert swap.status == "warn"


def test_skips_for_other_kinds_and_without_transforms():
    task, _ = class_task([5, 5, 5])
    (nothing,) = check_label_preserving(task, model=task.model)
    assert nothing.status == "skip" and "no augmentation" in nothing.message
    x = torch.rand(10, 3)
    data = TensorDataset(x, torch.rand(10, 3))
    regression = Task(fixed_linear(3), data, data, kind="regression")
    (f,) = check_label_preserving(regression, model=regression.model, transforms={"id": lambda b: b})
    assert f.status == "skip" and "regression" in f.message


# ----------------------------------------------------------------------------- describe_invariances


def test_affine_defaults_are_described():
    (f,) = describe_invariances(AffineAugment(size=8))
    assert f.tip == "augmentation-invariances" and f.status == "info"
    names = [i["name"] for i in f.evidence["invariances"]]
    assert names == ["horizontal mirror", "rotation", "scale", "translation", "perspective"]
    assert "up to +-10 degrees" in f.message and "label does not change" in f.message
    assert "no mirror for digits" in f.message and f.evidence["unknown"] == []


def test_sequential_and_lists_are_combined_and_unknown_parts_named():
    aug = nn.Sequential(AffineAugment(size=8, flip=0.0, max_rotate=0.0, zoom=(1, 1), max_translate=0.0,
                                      max_shear=5.0, max_warp=0.0), Lighting(brightness=0.1, contrast=0.0))
    (f,) = describe_invariances([aug, nn.Identity()])
    assert [i["name"] for i in f.evidence["invariances"]] == ["shear", "brightness"]

    def my_augment(x):
        return x

    (g,) = describe_invariances([my_augment, Lighting(p=0.0)])
    assert g.evidence == {"invariances": [], "unknown": ["function"]}
    assert "Cannot tell" in g.message and g.title == "No readable invariance in the augmentation"


def test_p_affine_zero_leaves_only_the_mirror_and_none_is_a_skip():
    (f,) = describe_invariances(AffineAugment(size=8, flip=0.5, p_affine=0.0))
    assert [i["name"] for i in f.evidence["invariances"]] == ["horizontal mirror"]
    (s,) = describe_invariances(None)
    assert s.status == "skip"
    with pytest.raises(TypeError, match="augment must be a callable"):
        describe_invariances(3)


# ----------------------------------------------------------------------------- calibration on digits


@pytest.fixture(scope="module")
def digits():
    from dltips.demos.digits import digits_task
    from dltips.training.fit import fit

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    task = digits_task()
    task.augment = AffineAugment(size=(8, 8), flip=0.0, max_rotate=0.0, zoom=(1, 1), max_translate=0.15,
                                 max_warp=0.0, p_affine=1.0)  # the model is checked as trained with its augmentation
    fit(task, epochs=8, progress=False, device="cpu")
    yield task
    torch.set_num_threads(threads)


def test_calibration_on_digits_flags_rotation_and_mirror_but_not_shifts(digits):
    transforms = {
        "identity": lambda x: x,
        "noise": lambda x: x + 0.05 * torch.randn_like(x),
        "shift": AffineAugment(size=(8, 8), flip=0.0, max_rotate=0.0, zoom=(1, 1), max_translate=0.05,
                               max_warp=0.0),
        "roll": lambda x: torch.roll(x, 1, dims=-1),
        "mirror": lambda x: torch.flip(x, dims=(-1,)),
        "rot180": lambda x: torch.rot90(x, 2, dims=(-2, -1)),
    }
    found = {f.evidence["transform"]: f for f in check_label_preserving(digits, model=digits.model, transforms=transforms)}
    assert found["identity"].evidence["accuracy"] > 0.95
    assert set(found) == set(transforms)
    for name in ("identity", "noise", "shift", "roll"):
        assert found[name].status == "pass", (name, found[name].message)
    for name in ("mirror", "rot180"):
        assert found[name].status == "warn", (name, found[name].message)
        assert found[name].figures[0]["rows"] and found[name].figures[1]["kind"] == "images"


def test_unstable_predictions_flag_a_transform_even_without_an_accuracy_drop():
    from dltips.data.invariance import MIN_FLIP, changes_labels

    def numbers(flip, n, drop=0.0, drop_z=0.0):
        return {"flip_rate": flip, "flip_rate_se": math.sqrt(flip * (1 - flip) / n), "drop": drop, "drop_z": drop_z}

    assert changes_labels(numbers(0.2, 300))  # 20% of 300 predictions changed: z = 8.7
    assert not changes_labels(numbers(MIN_FLIP / 2, 300))  # too few changed
    assert not changes_labels(numbers(0.2, 10))  # 2 of 10: z = 1.6, not certain
    assert changes_labels(numbers(0.02, 300, drop=0.3, drop_z=10.0))  # the drop rule alone
