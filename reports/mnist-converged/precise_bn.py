"""Is regular LR-Net-26's validation swing batch norm's running statistics?

Re-trains the sweep trial lrnet26-regular-lr0.05-s1000 for N epochs (training is deterministic on CPU: the same run,
checked against the trial's metrics), then validates its last weights in eval mode with the running statistics as
trained, in train mode (batch statistics), and in eval mode with the statistics recomputed over 30 training batches.

    .venv/bin/python reports/mnist-converged/precise_bn.py 13    # writes /tmp/pbn/run13; about 2 CPU-minutes
"""
import json, sys, torch
from pathlib import Path
from torch.utils.data import DataLoader
from lrrobust.training import TrainConfig, train
from lrrobust.checkpoint import load_checkpoint
from lrrobust.data import load_dataset
torch.set_num_threads(1)
trial = Path(__file__).resolve().parent / "sweep" / "lrnet26-regular-lr0.05-s1000"
cfg = json.loads((trial / "config.json").read_text())
for k in ("validation", "out", "resume"):
    cfg.pop(k)
out = Path('/tmp/pbn/run' + (sys.argv[1] if len(sys.argv) > 1 else ''))
epochs = int(sys.argv[1]) if len(sys.argv) > 1 else 13
if not (out / "last.pt").exists():
    train(TrainConfig(**{**cfg, "epochs": epochs, "out": str(out)}), progress=False)
mine = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
theirs = [json.loads(l) for l in (trial / "metrics.jsonl").read_text().splitlines()]
print("val_acc this run:", [m["val_acc"] for m in mine])
print("val_acc the trial:", [m["val_acc"] for m in theirs[:len(mine)]])
model = load_checkpoint(out / "last.pt")
val = DataLoader(load_dataset("mnist", "val"), batch_size=64)
tr = DataLoader(load_dataset("mnist", "train"), batch_size=64, shuffle=True, generator=torch.Generator().manual_seed(0))
def acc():
    model.eval(); c = n = 0
    with torch.no_grad():
        for x, y in val:
            c += (model(x).argmax(1) == y).sum().item(); n += len(y)
    return c / n
print("eval, running statistics as trained:", acc())
model.train(); c = n = 0
with torch.no_grad():
    for x, y in DataLoader(load_dataset("mnist", "val"), batch_size=64):
        c += (model(x).argmax(1) == y).sum().item(); n += len(y)
print("train-mode BN (batch statistics) on val:", c / n)
bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
for m in bns:
    m.reset_running_stats(); m.momentum = None
model.train()
with torch.no_grad():
    for i, (x, y) in enumerate(tr):
        if i == 30: break
        model(x)
print("eval, statistics recomputed over 30 training batches:", acc())
