"""
# Does MiniLM classify BBC News better when it reads the whole article?

Section 2 of notebook 04 with the `full` profile's recipe (linear probe, then fine-tuning:
300 steps of 16 articles at lr 2e-5, max_length 512), repeated over seeds, compared with the
same recipe on *sliding windows*: `ft.encode_windows` cuts each article into 512-token windows
that overlap by 128 tokens, and `ft.document_logits` averages the windows' logits per article.
38% of the test articles are longer than 512 tokens; truncation never shows the model their
endings, while TF-IDF reads every word.

Four numbers per seed: models trained on the first 512 tokens or on every window, each
evaluated on the first 512 tokens or on every window. Training on windows runs the same number
of epochs (so more steps: there are more windows than articles). It prints one table with the
mean and standard deviation over seeds, the errors of each, and the TF-IDF baseline.

    python benchmarks/long_articles.py                  # GPU: about 3 minutes
    python benchmarks/long_articles.py --seeds 0 --steps 4 --train-per-class 8   # a quick check

Results: docs/results/04_finetuning.md.
"""

from __future__ import annotations

import argparse
import time

import pandas as pd
import torch

from llm_tutorial import assets, runtime
from llm_tutorial import finetuning as ft
from llm_tutorial.trainer import TrainConfig


def fine_tuned(train_enc: dict, probe, steps: int, args, seed: int, device) -> torch.nn.Module:
    """The notebook's LP-FT recipe on `train_enc`, with `seed` for the head and the batches."""
    runtime.seed_everything(seed)
    model, _ = ft.load_classifier(num_labels=5, pooling="mean", dropout=0.1)
    model.to(device)
    ft.head_from_probe(model, probe)
    config = TrainConfig(max_steps=steps, lr=args.lr, warmup_steps=0.1, schedule="linear",
                         log_every=max(steps // 4, 1), progress=False)
    ft.fine_tune(model, train_enc, config, args.batch, seed=seed)
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].strip("# \n"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=300, help="steps on first-512 training")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--lr", type=float, default=2e-5)
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--stride", type=int, default=128)
    parser.add_argument("--train-per-class", type=int, default=None, help="default: all")
    parser.add_argument("--out", default=None, help="CSV file for the per-seed rows")
    args = parser.parse_args()

    start = time.perf_counter()
    profile = runtime.get_profile("full")
    device = runtime.get_device(profile)
    bbc = assets.load_bbc_news()
    idx = ft.sample_per_class(bbc.train_labels, args.train_per_class, seed=0)
    texts, labels = [bbc.train_texts[i] for i in idx], [bbc.train_labels[i] for i in idx]
    test_texts, test_labels = bbc.test_texts, bbc.test_labels

    tfidf = ft.tfidf_classifier().fit(texts, labels)
    tfidf_acc = ft.accuracy(tfidf.predict(test_texts), test_labels)

    frozen, tokenizer = assets.load_minilm()
    frozen.to(device)
    probe = ft.linear_probe().fit(ft.embed_texts(frozen, tokenizer, texts, args.max_length), labels)
    probe_acc = ft.accuracy(probe.predict(ft.embed_texts(frozen, tokenizer, test_texts,
                                                         args.max_length)), test_labels)
    del frozen

    first = ft.encode(tokenizer, texts, args.max_length, labels)
    windows, _ = ft.encode_windows(tokenizer, texts, args.max_length, args.stride, labels)
    test_first = ft.encode(tokenizer, test_texts, args.max_length)
    test_windows, test_doc = ft.encode_windows(tokenizer, test_texts, args.max_length, args.stride)
    long_share = (torch.bincount(test_doc) > 1).float().mean().item()
    window_steps = round(args.steps * len(windows["labels"]) / len(first["labels"]))
    print(f"{len(texts)} training articles -> {len(windows['labels'])} windows; "
          f"{len(test_texts)} test articles -> {len(test_doc)} windows "
          f"({long_share:.0%} need more than one); steps {args.steps} / {window_steps}",
          flush=True)

    rows = []
    for seed in args.seeds:
        for train_on, enc, steps in (("first 512", first, args.steps),
                                     ("all windows", windows, window_steps)):
            t0 = time.perf_counter()
            model = fine_tuned(enc, probe, steps, args, seed, device)
            seconds = time.perf_counter() - t0
            by_first = ft.predict_logits(model, test_first).argmax(1)
            by_windows = ft.document_logits(ft.predict_logits(model, test_windows), test_doc).argmax(1)
            for read, pred in (("first 512", by_first), ("all windows", by_windows)):
                acc = ft.accuracy(pred, test_labels)
                rows.append({"seed": seed, "trained on": train_on, "read at test": read,
                             "accuracy": acc, "errors": round((1 - acc) * len(test_labels)),
                             "train s": seconds})
            print(pd.DataFrame(rows[-2:]).round(4).to_string(index=False, header=False), flush=True)
            del model

    table = pd.DataFrame(rows)
    summary = (table.groupby(["trained on", "read at test"], sort=False)
               .agg(mean=("accuracy", "mean"), std=("accuracy", "std"), errors=("errors", "mean"),
                    min=("accuracy", "min"), max=("accuracy", "max"), train_s=("train s", "mean")))
    print(f"\nTF-IDF (1-2 grams) + LR: {tfidf_acc:.4f}; frozen MiniLM probe (first "
          f"{args.max_length}): {probe_acc:.4f}; {len(test_labels)} test articles, seeds {args.seeds}")
    print(summary.round(4).to_string())
    if args.out:
        table.to_csv(args.out, index=False)
    name = torch.cuda.get_device_name() if device.type == "cuda" else "CPU"
    print(f"device {device} ({name}), torch {torch.__version__}, total "
          f"{time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
