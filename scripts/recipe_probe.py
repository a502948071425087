"""Recipe probe (issue 9 search, docs/RESULTS.md): one process, no DeepSpeed, the demo model from
configs/demo_cpu.yaml; optional stage-1 interleaved frame captions (--stage1 N), then QA training on
cached frames, evaluated on val questions with real, shuffled (frames 4,1,2,3) and zeroed frames.
A research tool, not part of the trainer: what it finds goes into the configs and train/ proper.

    python scripts/recipe_probe.py --data DIR --tokenizer RUN/tokenizer --stage1 500 \
        --steps 600 --set model.projector.center=true
DIR holds data/{train,val}/records.jsonl + videos/ of `python -m data_shards synth --scene shots`."""

import argparse
import json
import random
import time

import torch

from data_shards.stream.frames import decode_frames
from train import prompts
from train import prompts as P
from train.config import TaskConfig, load_config
from train.models import build_model
from train.tasks import Example, collate
from train.tokenizer import build_tokenizer, frame_token_id

p = argparse.ArgumentParser()
p.add_argument("--data", required=True)
p.add_argument("--tokenizer", required=True)
p.add_argument("--steps", type=int, default=400)
p.add_argument("--bs", type=int, default=8)
p.add_argument("--lr", type=float, default=3e-3)
p.add_argument("--fmt", default="letter_text")
p.add_argument("--set", action="append", default=[])
p.add_argument("--ntrain", type=int, default=100000)
p.add_argument("--types", default="")
p.add_argument("--nval", type=int, default=40)
p.add_argument("--threads", type=int, default=2)
p.add_argument("--caption", action="store_true")
p.add_argument("--vnorm", default="", help="ln: LayerNorm the visual tokens; center: = model.projector.center")
p.add_argument("--slot-embed", action="store_true", help="learned embedding per visual-token slot of a frame")
p.add_argument("--stage1", type=int, default=0)
p.add_argument("--stage1-form", choices=("interleaved", "after"), default="interleaved",
               help="after: the trainer's task.mode=caption example (caption after all frames)")
p.add_argument("--zero", action="store_true")
p.add_argument("--debug", action="store_true")
a = p.parse_args()
ORD = ("first", "second", "third", "fourth")


def caption(meta):
    parts = []
    for k in range(4):
        objs = [
            f"the {o['shape']} is {o['shots'][k]['colour']} in the {o['shots'][k]['quad']}"
            for o in meta["objects"]
            if o["shots"][k]["quad"]
        ]
        parts.append(f"Shot {k + 1}: " + ("; ".join(objs) if objs else "nothing") + ".")
    return " ".join(parts)


torch.set_num_threads(a.threads)
torch.manual_seed(0)
random.seed(0)
cfg = load_config("configs/demo_cpu.yaml", [f"--{s}" for s in a.set])
tok = build_tokenizer(a.tokenizer)
model = build_model(cfg.model, tok)
layout = model.frame_layout(4)
if a.vnorm:
    import torch.nn.functional as F

    _orig = model.projector.forward

    def _fwd(feats):
        x = _orig(feats)
        if "center" in a.vnorm:
            x = x - x.mean(dim=1, keepdim=True)
        return F.layer_norm(x, x.shape[-1:])

    model.projector.forward = _fwd


if a.slot_embed:
    P_ = layout.tokens_per_group
    model.slot_embed = torch.nn.Parameter(torch.zeros(P_, cfg.model.llm.config["hidden_size"]))
    torch.nn.init.normal_(model.slot_embed, std=1.0)
    _orig2 = model.projector.forward

    def _fwd2(feats):
        x = _orig2(feats)  # [B, T*P, D]
        B_, N_, D_ = x.shape
        return (x.view(B_, N_ // P_, P_, D_) + model.slot_embed).view(B_, N_, D_)

    model.projector.forward = _fwd2


def load(split, n):
    recs = [json.loads(line) for line in open(f"{a.data}/data/{split}/records.jsonl")][:n]
    out = []
    for r in recs:
        fr = decode_frames(f"{a.data}/data/{split}/videos/" + r["video"], 4, (32, 32))
        if a.caption:
            out.append((fr, {"qid": r["video_id"], "caption": caption(r["meta"])}))
            continue
        for q in r["qas"]:
            if not a.types or q["qtype"] in a.types.split(","):
                out.append((fr, q))
    return out


t0 = time.time()
tr, va = load("train", a.ntrain), load("val", a.nval)
print("data", len(tr), len(va), f"{time.time() - t0:.0f}s", flush=True)

tc = TaskConfig(mode="qa", answer_format=a.fmt)


def ex(fr, q):
    if a.caption:
        return Example(
            qid=q["qid"],
            task="qa",
            task_id=1,
            frames=fr,
            question="Describe every shot.",
            options=[],
            instruction="Describe.",
            target=q["caption"],
        )
    return Example(
        qid=q["qid"],
        task="qa",
        task_id=1,
        frames=fr,
        question=q["question"],
        options=q["options"],
        instruction=prompts.qa_instruction(a.fmt),
        target=prompts.answer_text(q["answer"], q["options"], a.fmt),
    )


opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=a.lr, weight_decay=0.01)
sched = torch.optim.lr_scheduler.LambdaLR(
    opt,
    lambda s: (
        min(1, (s + 1) / 10) * (0.1 + 0.9 * 0.5 * (1 + __import__("math").cos(__import__("math").pi * s / a.steps)))
    ),
)


def evaluate():
    if a.caption:
        model.eval()
        res = {}
        for name in ("real", "shuf"):
            batch = collate([ex(fr if name == "real" else fr[[3, 0, 1, 2]], q) for fr, q in va[:64]], tok, tc, layout)
            w = (batch["labels"] != -100).float()
            w = w / w.sum()
            with torch.no_grad():
                inputs = {k: batch[k] for k in ("pixel_values", "input_ids", "attention_mask", "labels")}
                res[name] = round(model(**inputs, loss_weight=w)["loss"].item(), 4)
        model.train()
        return res
    model.eval()
    res, per_type = {}, {}
    for name in ("real", "shuf", "zero"):
        c = 0
        for i in range(0, len(va), 32):
            chunk = va[i : i + 32]
            px = torch.stack([fr if name == "real" else fr[[3, 0, 1, 2]] for fr, _ in chunk])
            if name == "zero" or a.zero:
                px = torch.zeros_like(px)
            with torch.no_grad():
                out = model.score_options(
                    tok,
                    px,
                    [q["question"] for _, q in chunk],
                    [q["options"] for _, q in chunk],
                    None,
                    answer_format=a.fmt,
                )
            for pr, (_, q) in zip(out["pred"].tolist(), chunk):
                c += int(pr) == q["answer"]
                if name == "real":
                    bt = per_type.setdefault(q.get("qtype", "?"), [0, 0])
                    bt[0], bt[1] = bt[0] + (int(pr) == q["answer"]), bt[1] + 1
        res[name] = round(100 * c / len(va), 1)
    res["types"] = {t: round(100 * v[0] / v[1]) for t, v in sorted(per_type.items())}
    model.train()
    return res




def stage1_batch(items):
    fid = frame_token_id(tok)
    rows = []
    for fr, _, meta in items:
        ids, lab = [tok.bos_token_id], [-100]
        for k in range(4):
            pre = (
                tok.encode(P.FRAME_PREFIX.format(index=k + 1), add_special_tokens=False)
                + [fid] * layout.tokens_per_group
            )
            objs = [
                f"the {o['shape']} is {o['shots'][k]['colour']} in the {o['shots'][k]['quad']}"
                for o in meta["objects"]
                if o["shots"][k]["quad"]
            ]
            cap = tok.encode(" " + ("; ".join(objs) or "nothing") + ".", add_special_tokens=False)
            ids += pre + cap
            lab += [-100] * len(pre) + cap
        rows.append((ids, lab, fr))
    L = max(len(r[0]) for r in rows)
    B = len(rows)
    input_ids = torch.full((B, L), tok.pad_token_id)
    labels = torch.full((B, L), -100)
    am = torch.zeros((B, L), dtype=torch.long)
    for i, (ids, lab, _) in enumerate(rows):
        input_ids[i, : len(ids)] = torch.tensor(ids)
        labels[i, : len(ids)] = torch.tensor(lab)
        am[i, : len(ids)] = 1
    # labels[t] is the token at t; the model predicts labels[t+1] from t (shift inside forward)
    return torch.stack([r[2] for r in rows]), input_ids, am, labels


if a.stage1:
    metas = {}
    for r in (json.loads(line) for line in open(f"{a.data}/data/train/records.jsonl")):
        metas[r["video_id"]] = r["meta"]
    vids = {}
    for fr, q in tr:
        vids.setdefault(q["qid"].split("/")[2], fr)
    items = [(fr, None, metas[v]) for v, fr in vids.items()]
    o1 = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=a.lr, weight_decay=0.01)
    t0 = time.time()
    model.train()
    ctc = TaskConfig(mode="caption")
    for s1 in range(a.stage1):
        if a.stage1_form == "after":
            b = collate([Example(qid="c", task="caption", task_id=1, frames=fr, question="", options=[],
                                 instruction=P.CAPTION_INSTRUCTION, target=caption(meta))
                         for fr, _, meta in (random.choice(items) for _ in range(a.bs))], tok, ctc, layout)
            px, ii, am, lab = b["pixel_values"], b["input_ids"], b["attention_mask"], b["labels"]
        else:
            px, ii, am, lab = stage1_batch([random.choice(items) for _ in range(a.bs)])
        w = (lab != -100).float()
        w = w / w.sum()
        out = model(pixel_values=px, input_ids=ii, attention_mask=am, labels=lab, loss_weight=w)
        out["loss"].backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        o1.step()
        o1.zero_grad()
        if s1 % 100 == 0:
            with torch.no_grad():
                px2 = px[:, [3, 0, 1, 2]]
                text = {"input_ids": ii, "attention_mask": am, "labels": lab, "loss_weight": w}
                l2 = model(pixel_values=px2, **text)["loss"].item()
                l0 = model(pixel_values=torch.zeros_like(px), **text)["loss"].item()
            print(
                "stage1",
                s1,
                "loss",
                round(out["loss"].item(), 3),
                "shuf",
                round(l2, 3),
                "zero",
                round(l0, 3),
                f"{time.time() - t0:.0f}s",
                flush=True,
            )
model.train()
t0 = time.time()
losses = []
for s in range(a.steps):
    batch = collate([ex(*random.choice(tr)) for _ in range(a.bs)], tok, tc, layout)
    if a.zero:
        batch["pixel_values"].zero_()
    w = (batch["labels"] != -100).float()
    w = w / w.sum()
    out = model(**{k: batch[k] for k in ("pixel_values", "input_ids", "attention_mask", "labels")}, loss_weight=w)
    out["loss"].backward()
    gn = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    opt.zero_grad()
    sched.step()
    losses.append(out["loss"].item())
    if a.debug and s % 50 == 0:
        with torch.no_grad():
            vis = model.encode_frames(batch["pixel_values"])
        print(
            s,
            "loss",
            round(losses[-1], 3),
            "vis std across clips",
            round(vis.std(0).mean().item(), 4),
            "norm",
            round(vis.norm(dim=-1).mean().item(), 3),
            flush=True,
        )
    if (s + 1) % max(1, a.steps // 6) == 0:
        print(
            s + 1,
            "loss",
            round(sum(losses[-50:]) / len(losses[-50:]), 3),
            evaluate(),
            f"{time.time() - t0:.0f}s",
            flush=True,
        )
