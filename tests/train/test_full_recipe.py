"""The GPU recipe (`--recipe full`): Proxy-Anchor through Quaterion's pytorch-metric-learning
wrapper, AdamW, and a warm-up with the backbone frozen. Tiny runs (random ResNet18, 32 px, CPU)."""

from __future__ import annotations

from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch

from core.errors import run_cli
from core.preprocessing import Preprocessing
from train import recipes
from train import train as train_module
from train.config import TrainConfig
from train.model import CarsModel, make_loss
from train.synthetic import generate

TINY = ["--backbone", "resnet18", "--weights", "none", "--input-size", "32"]
PROXIES = "_loss._loss.proxies"  # the wrapper keeps the pytorch-metric-learning loss as a submodule


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """6 classes x 8 images, 48 px: 3 classes train (6 images each + 2 for validation)."""
    return generate(tmp_path_factory.mktemp("full") / "data", colours=3, shapes=2, per_class=8, size=48)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--recipe", "seed", "--weight-decay", "0.01"], "--weight-decay would do nothing here: it is --optimizer"),
        (["--recipe", "seed", "--optimizer", "adamw", "--weight-decay", "-1"], "--weight-decay and --warmup-epochs"),
        (["--recipe", "seed", "--warmup-epochs", "1"], "--warmup-epochs would do nothing here: only --trainable"),
        (["--recipe", "full", "--warmup-epochs", "-1"], "must be >= 0, got 0.0001 and -1"),
        (["--recipe", "full", "--epochs", "1"],
         "--warmup-epochs 1 keeps the backbone frozen for all of --epochs 1: nothing would fine-tune it "
         "(--warmup-epochs set by --recipe full)"),
        (["--recipe", "full", "--warmup-epochs", "3", "--epochs", "3"], "keeps the backbone frozen for all of"),
        (["--recipe", "seed", "--proxy-lr", "0.1"], "--proxy-lr would do nothing here: only --loss proxy_anchor"),
        (["--recipe", "full", "--loss", "triplet", "--proxy-alpha", "16"], "--proxy-alpha would do nothing here"),
        (["--recipe", "seed", "--loss", "proxy_anchor", "--proxy-lr", "0"], "--proxy-lr and --proxy-alpha must be > 0"),
        (["--recipe", "seed", "--loss", "proxy_anchor", "--margin", "-0.1"], "--margin must be >= 0"),
        (["--recipe", "seed", "--loss", "proxy_anchor", "--mining", "all"], "--mining would do nothing here"),
        (["--recipe", "whitened", "--optimizer", "adamw"], "--head whitening is fitted in one pass, not trained"),
    ],
)  # fmt: skip
def test_new_flags_refuse_bad_values_in_one_line(argv, message, tmp_path, capsys):
    argv = ["--data", str(tmp_path), "--out", str(tmp_path / "run"), *TINY, *argv]
    assert run_cli(train_module.main, argv) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and message in err, err


def test_the_full_recipe_sets_proxy_anchor_adamw_and_a_warm_up(tmp_path):
    config = TrainConfig.from_argv(["--data", str(tmp_path), "--out", str(tmp_path / "run"), "--recipe", "full", *TINY])
    assert (config.loss, config.optimizer, config.weight_decay) == ("proxy_anchor", "adamw", 1e-4)
    assert config.warmup_epochs == 1
    assert (config.trainable_blocks, config.augment, config.no_cache) == (4, True, True)
    assert (config.margin, config.proxy_alpha, config.proxy_lr) == (None, 32.0, 1e-2)  # margin None: the paper's 0.1
    assert config.proxy_lr == 100 * config.backbone_lr
    # Flags win over the recipe, and what the recipe set for another loss or optimizer is no error.
    argv = ["--data", str(tmp_path), "--out", str(tmp_path / "run"), "--recipe", "full", *TINY]
    other = TrainConfig.from_argv([*argv, "--loss", "multi_similarity", "--optimizer", "adam", "--warmup-epochs", "0"])
    assert (other.loss, other.optimizer, other.warmup_epochs) == ("multi_similarity", "adam", 0)
    assert "proxy_anchor" in recipes.RECIPES["full"].summary.replace("Proxy-Anchor", "proxy_anchor")


def test_proxy_anchor_through_quaterions_wrapper_learns_classes():
    """The loss make_loss builds (pytorch-metric-learning's ProxyAnchorLoss in Quaterion's
    PytorchMetricLearningWrapper, called as Quaterion's training step calls it) trains a layer and
    its proxies: the loss falls and the nearest neighbour is more often of the same class."""
    torch.manual_seed(0)
    labels = torch.arange(10).repeat_interleave(20)
    points = torch.randn(10, 32)[labels] * 0.6 + torch.randn(200, 32)
    points[:, :16] *= 4  # noise the layer must learn to ignore
    layer, loss = torch.nn.Linear(32, 16), make_loss("proxy_anchor", None, "hard", 16, 10)
    groups = [{"params": layer.parameters(), "lr": 1e-3}, {"params": loss.parameters(), "lr": 1e-2}]
    optimizer = torch.optim.AdamW(groups, weight_decay=1e-4)

    def precision_at_1() -> float:
        embeddings = torch.nn.functional.normalize(layer(points), dim=1)
        similarity = (embeddings @ embeddings.T).fill_diagonal_(-2)
        return (labels[similarity.argmax(1)] == labels).float().mean().item()

    before, losses = precision_at_1(), []
    for _ in range(150):
        optimizer.zero_grad()
        value = loss(embeddings=layer(points), groups=labels)
        value.backward()
        optimizer.step()
        losses.append(value.item())
    assert losses[-1] < 0.5 * losses[0]
    assert precision_at_1() > before + 0.1, (before, precision_at_1())


def tiny_model(**kwargs) -> CarsModel:
    return CarsModel(
        backbone="resnet18", weights="none", preprocessing=Preprocessing(input_size=32), trainable_blocks=4,
        num_classes=3, **kwargs,
    )  # fmt: skip


def test_adamw_holds_every_backbone_stage_and_the_proxies_in_groups_of_their_own():
    model = tiny_model(loss="proxy_anchor", optimizer="adamw", weight_decay=1e-4, lr=3e-3, backbone_lr=1e-4)
    optimizer = model.configure_optimizers()
    assert type(optimizer) is torch.optim.AdamW
    head, backbone, proxies = optimizer.param_groups
    assert [g["lr"] for g in optimizer.param_groups] == [3e-3, 1e-4, 1e-2]
    assert all(g["weight_decay"] == 1e-4 for g in optimizer.param_groups)
    assert {id(p) for p in backbone["params"]} == {id(p) for p in model.model.head.top.parameters()}
    assert [p.shape for p in proxies["params"]] == [(3, model.model.head.output_size)]
    assert proxies["params"][0] is model.loss.state_dict(keep_vars=True)["_loss.proxies"]
    ids = [id(p) for g in optimizer.param_groups for p in g["params"]]
    assert len(ids) == len(set(ids))  # no parameter in two groups
    assert {id(p) for p in head["params"]} >= {id(p) for p in model.model.head.skip.parameters()}
    # The proxies are a registered submodule's parameters: in the checkpoint, moved with the model.
    assert PROXIES in model.state_dict()
    plain = tiny_model(loss="multi_similarity")  # default: Adam, no decay, no proxy group
    assert type(plain.configure_optimizers()) is torch.optim.Adam
    assert len(plain.configure_optimizers().param_groups) == 2


class Recorder(pl.Callback):
    """Copies of the backbone stages, the proxies and a BatchNorm's statistics at the start and after
    each epoch; optionally a simulated power cut after an epoch (once its checkpoint is written)."""

    def __init__(self, stop_after: int | None = None) -> None:
        self.stop_after = stop_after
        self.snapshots: dict[str, dict[str, torch.Tensor]] = {}
        self.requires_grad: dict[int, bool] = {}

    def snap(self, pl_module: CarsModel, name: str) -> None:
        top = pl_module.model.head.top
        bn = next(m for m in top.modules() if isinstance(m, torch.nn.BatchNorm2d))
        self.snapshots[name] = {
            "backbone": torch.cat([p.detach().flatten() for p in pl_module.backbone_stages()]).clone(),
            "proxies": pl_module.proxies()[0].detach().clone(),
            "bn_mean": bn.running_mean.clone(),
        }

    def on_train_start(self, trainer: pl.Trainer, pl_module: CarsModel) -> None:
        self.snap(pl_module, "start")

    def on_train_batch_start(self, trainer, pl_module: CarsModel, batch, batch_idx: int) -> None:
        self.requires_grad[trainer.current_epoch] = all(p.requires_grad for p in pl_module.backbone_stages())

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: CarsModel) -> None:
        self.snap(pl_module, f"epoch{trainer.current_epoch}")
        if trainer.current_epoch == self.stop_after:
            raise RuntimeError("simulated power cut")


def train_with(monkeypatch: pytest.MonkeyPatch, recorder: Recorder, argv: list[str]) -> None:
    """train.train.main in this process, with `recorder` among the trainer's callbacks."""
    make_trainer = train_module.make_trainer
    monkeypatch.setattr(
        train_module, "make_trainer", lambda config, callbacks: make_trainer(config, [*callbacks, recorder])
    )
    train_module.main(argv)


@pytest.mark.slow
def test_warm_up_freezes_the_backbone_proxies_learn_and_resume_restores_them(tiny_data, tmp_path, monkeypatch):
    out = tmp_path / "run"
    argv = ["--data", str(tiny_data), "--out", str(out), "--recipe", "full", *TINY, "--loader-workers", "0",
            "--epochs", "4", "--warmup-epochs", "2", "--patience", "4"]  # fmt: skip
    first = Recorder(stop_after=2)
    with pytest.raises(RuntimeError, match="simulated power cut"):
        train_with(monkeypatch, first, argv)
    shots = first.snapshots
    assert first.requires_grad == {0: False, 1: False, 2: True}
    # Warm-up epochs 0 and 1: the backbone is untouched, bit for bit (no step, no weight decay),
    # while the proxies learn; epoch 2 moves the backbone.
    assert torch.equal(shots["epoch1"]["backbone"], shots["start"]["backbone"])
    assert not torch.equal(shots["epoch0"]["proxies"], shots["start"]["proxies"])
    assert not torch.equal(shots["epoch1"]["proxies"], shots["epoch0"]["proxies"])
    assert not torch.equal(shots["epoch2"]["backbone"], shots["epoch1"]["backbone"])
    assert torch.equal(shots["epoch2"]["bn_mean"], shots["start"]["bn_mean"])  # BatchNorm statistics frozen

    checkpoint = torch.load(out / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert torch.equal(checkpoint["state_dict"][PROXIES], shots["epoch2"]["proxies"])
    assert checkpoint["optimizer_states"][0]["param_groups"][2]["lr"] == 1e-2  # the proxies' group and its state
    assert checkpoint["epoch"] == 2

    resumed = Recorder()
    train_with(monkeypatch, resumed, [*argv, "--resume"])
    assert torch.equal(resumed.snapshots["start"]["proxies"], shots["epoch2"]["proxies"])
    assert torch.equal(resumed.snapshots["start"]["backbone"], shots["epoch2"]["backbone"])
    assert resumed.requires_grad == {3: True}  # past the warm-up: the backbone trains at once
    assert not torch.equal(resumed.snapshots["epoch3"]["proxies"], shots["epoch2"]["proxies"])
    assert (out / "run.json").is_file() and not (out / "checkpoints").exists()
