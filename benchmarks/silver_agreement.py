"""
# How closely can MiniLM imitate spaCy's entities?

Section 5 of notebook 05 with the `full` profile's sizes, as a script, so that the silver
agreement can be measured (and the case channel ablated) without running the rest of the
notebook: spaCy's `en_core_web_sm` labels sentences of the BBC training and test articles,
MiniLM (uncased, word embeddings frozen, optionally with `tc.CaseChannel`) learns the six types
on the training sentences with `tc.train_tagger` (the notebook's recipe and the course
trainer), and the agreement is spaCy-referenced entity F1 on the test sentences. It prints the
agreement curve, the per-type report and the counts of `tc.disagreements`, and writes the
disagreements to a CSV file to read.

    python benchmarks/silver_agreement.py --case-channel      # the notebook's recipe
    python benchmarks/silver_agreement.py --no-case-channel   # the ablation

About 5 minutes per run on an H100 (and 2 of spaCy on the CPU, once with `--cache`); on a
2-core CPU about 20 minutes per 1,000 steps. Results: docs/results/05_token_classification.md.
"""

from __future__ import annotations

import argparse
import gzip
import json
import time
from pathlib import Path

from llm_tutorial import assets, runtime
from llm_tutorial import token_classification as tc


def silver(texts: list[str], n: int | None, split: str, cache: str | None) -> list:
    """spaCy's (words, tags) for `n` sampled sentences of `texts`, through the cache if given."""
    path = None if cache is None else Path(cache) / f"silver_{split}_{n or 'all'}.json.gz"
    if path is not None and path.is_file():
        with gzip.open(path, "rt", encoding="utf-8") as file:
            return [(words, tags) for words, tags in json.load(file)]
    nlp = assets.load_spacy_ner()
    tagged = [tc.silver_tags(doc) for doc in
              tc.annotate(nlp, tc.sample_sentences(texts, n, seed=0))]
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        with gzip.open(path, "wt", encoding="utf-8") as file:
            json.dump(tagged, file)
    return tagged


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].strip("# \n"))
    parser.add_argument("--train", type=int, default=None,
                        help="training sentences (default: all 29,662 that qualify)")
    parser.add_argument("--test", type=int, default=1000, help="test sentences")
    parser.add_argument("--steps", type=int, default=6000)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--case-channel", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--cache", default=None,
                        help="folder for spaCy's annotations: read them from there when present, "
                             "else annotate and write them (e.g. to annotate on a CPU and train "
                             "on a GPU machine that has no spaCy)")
    parser.add_argument("--annotate-only", action="store_true",
                        help="stop after annotating (with --cache: fill the cache)")
    parser.add_argument("--disagreements", default=None,
                        help="CSV file for the disagreements (default: outputs/silver_*.csv)")
    args = parser.parse_args()

    from transformers import AutoTokenizer

    start = time.perf_counter()
    profile = runtime.get_profile("full")
    device = runtime.get_device(profile)
    tokenizer = AutoTokenizer.from_pretrained(assets.asset_path("minilm"))
    bbc = assets.load_bbc_news()
    train = silver(bbc.train_texts, args.train, "train", args.cache)
    test = silver(bbc.test_texts, args.test, "test", args.cache)
    print(f"{len(train) + len(test)} silver sentences ready in "
          f"{time.perf_counter() - start:.0f} s", flush=True)
    if args.annotate_only:
        return

    labels = tc.bio_labels(tc.SILVER_TYPES)
    id2label = tc.label_maps(labels)[1]
    train_start = time.perf_counter()
    model, history = tc.train_tagger(
        tokenizer, train, labels, steps=args.steps, lr=args.lr, batch_size=args.batch,
        max_length=args.max_length, eval_sentences=test, case_channel=args.case_channel,
        device=device, profile=profile, desc="silver NER")
    train_s = time.perf_counter() - train_start
    print(history.dropna(subset=["entity_f1"])[["step", "train_loss", "entity_f1"]]
          .to_string(index=False))

    words, gold = [w for w, _ in test], [t for _, t in test]
    predicted = tc.predict_word_tags(model, tokenizer, words, id2label, args.max_length)
    print(tc.entity_report(gold, predicted).round(3).to_string())
    disagreement = tc.disagreements(words, gold, predicted)
    print(disagreement["kind"].value_counts().to_string())
    name = "case" if args.case_channel else "uncased"
    path = args.disagreements or runtime.output_dir() / f"silver_disagreements_{name}.csv"
    disagreement.to_csv(path, index=False)
    print(f"device {device}, encoding and training {train_s:.0f} s, total "
          f"{time.perf_counter() - start:.0f} s; disagreements in {path}")


if __name__ == "__main__":
    main()
