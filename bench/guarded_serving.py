"""`serve-llm` behind the constitutional classifiers, on SmolLM2-135M-Instruct, through the `openai` client.

Two servers in this process over one loaded SmolLM2 (bare, and behind the classifiers-real
recipe's input and streaming output classifiers) answer the recipe's held-out prompts: 48 real
red-team prompts (AdvBench + HarmBench, never trained on) and alignlab's 48 benign ones (16
look-alikes), as greedy chat completions of 24 tokens, 16 requests in flight. Per set: the share withheld (finish_reason
content_filter) by the input and by the output classifier with 95% Wilson intervals; whether every
answer the guard let through is the bare server's answer, token for token; and the wall time of the
set, bare and guarded, the median of `--rounds` alternating rounds, with its ratio.

`--point each` (default) puts each classifier at the threshold its `classifier_eval` chose for it
alone at <= 5% false positives; `--point joint` at the pair of thresholds chosen for the two
together (a classifier the joint point leaves out is off).

Needs `bash scripts/real-model.sh` (the model) and `alignlab run recipes/classifiers-real.yaml`
(the classifiers) first:

    .venv/bin/python bench/guarded_serving.py [--run runs/classifiers-real] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

MODEL = ".cache/models/smollm2-135m-instruct"


def read_prompts(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def ask_all(client, prompts: list[dict], max_tokens: int) -> tuple[list, float]:
    def ask(record):
        return client.chat.completions.create(model="smollm2", messages=record["messages"], max_tokens=max_tokens,
                                              temperature=0)

    start = time.perf_counter()
    with ThreadPoolExecutor(16) as pool:
        replies = list(pool.map(ask, prompts))
    return replies, time.perf_counter() - start


def main() -> None:
    import openai
    import torch

    from alignlab.eval.winrate import wilson_interval
    from alignlab.feedback.ai.llm import LocalLLM
    from alignlab.feedback.ai.llm.server import make_app, start_in_thread
    from alignlab.guard.settings import GuardSettings

    parser = argparse.ArgumentParser()
    parser.add_argument("--run", default="runs/classifiers-real")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--max-tokens", type=int, default=24)
    parser.add_argument("--point", choices=["each", "joint"], default="each")
    args = parser.parse_args()
    run = Path(args.run)
    torch.set_num_threads(2)
    chosen = json.loads((run / "classifier_eval/metrics.json").read_text())
    if args.point == "each":
        thresholds = {f"{kind}_threshold": chosen[kind]["operating_point"]["threshold"] for kind in ("input", "output")}
    else:
        joint = chosen["guard"]["operating_point"]
        thresholds = {key: joint[key] for key in ("input_threshold", "output_threshold") if joint[key] is not None}
    classifiers = {kind: str(run / f"{kind}_classifier/model") for kind in ("input", "output")
                   if f"{kind}_threshold" in thresholds}
    bare = LocalLLM(MODEL, device="cpu", batch_size=16)
    guard = GuardSettings(**classifiers, **thresholds).build(bare.tokenizer, bare.device)
    guarded = LocalLLM(bare.model, tokenizer=bare.tokenizer, batch_size=16, gate=guard.gate(bare.pad_id))
    servers = {name: start_in_thread(make_app(llm, "smollm2")) for name, llm in (("bare", bare), ("guarded", guarded))}
    clients = {name: openai.OpenAI(base_url=url, api_key="none", max_retries=0, timeout=1800)
               for name, (url, _) in servers.items()}
    sets = {name: read_prompts(run / f"classifier_data/data/{name}_heldout.jsonl") for name in ("harmful", "benign")}
    seconds = {(s, name): [] for s in sets for name in clients}
    replies = {}
    for _ in range(args.rounds):
        for set_name, prompts in sets.items():
            for name, client in clients.items():
                replies[set_name, name], took = ask_all(client, prompts, args.max_tokens)
                seconds[set_name, name].append(took)
    for _, stop in servers.values():
        stop()

    report = {"point": args.point, "thresholds": thresholds, "max_tokens": args.max_tokens, "rounds": args.rounds,
              "sets": {}}
    for set_name, prompts in sets.items():
        plain, behind = replies[set_name, "bare"], replies[set_name, "guarded"]
        withheld = [r.choices[0].finish_reason == "content_filter" for r in behind]
        by_input = [w and r.usage.completion_tokens == 0 for w, r in zip(withheld, behind)]
        through = [(p, g) for p, g, w in zip(plain, behind, withheld) if not w]
        figures = {}
        for label, flags in (("withheld", withheld), ("by_input", by_input),
                             ("by_output", [w and not i for w, i in zip(withheld, by_input)])):
            low, high = wilson_interval(sum(flags), len(flags))
            figures[label] = {"count": sum(flags), "n": len(flags), "low": low, "high": high}
        same = sum(p.choices[0].message.content == g.choices[0].message.content for p, g in through)
        figures["let_through_identical"] = f"{same}/{len(through)}"
        if set_name == "benign":  # the false positives, to read
            figures["withheld_prompts"] = [{"prompt": p["messages"][-1]["content"], "by": "input" if i else "output",
                                            "lookalike": bool(p.get("lookalike"))}
                                           for p, w, i in zip(prompts, withheld, by_input) if w]
        bare_s, guarded_s = (statistics.median(seconds[set_name, name]) for name in ("bare", "guarded"))
        figures["seconds_bare"], figures["seconds_guarded"], figures["ratio"] = bare_s, guarded_s, guarded_s / bare_s
        report["sets"][set_name] = figures
        print(f"{set_name:8s} withheld {figures['withheld']['count']}/{len(prompts)} "
              f"[{figures['withheld']['low']:.3f}, {figures['withheld']['high']:.3f}] "
              f"(input {figures['by_input']['count']}, output {figures['by_output']['count']}); "
              f"let through identical {figures['let_through_identical']}; "
              f"wall s bare {bare_s:.1f} guarded {guarded_s:.1f} (x{guarded_s / bare_s:.2f})")
    lookalike = [r.choices[0].finish_reason == "content_filter"
                 for r, p in zip(replies["benign", "guarded"], sets["benign"]) if p.get("lookalike")]
    report["lookalike_withheld"] = f"{sum(lookalike)}/{len(lookalike)}"
    print(f"look-alikes withheld {sum(lookalike)}/{len(lookalike)}")
    out = Path(f"bench/out/guarded_serving-{args.point}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
