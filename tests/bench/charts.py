"""Draws the benchmark charts from results.json (written by `bench`): PNG files beside it.

latency.png     send→receive percentiles at each fixed rate, beside Kafka's produce→consume floor
throughput.png  p99 send→acknowledgement and send→receive against the rate offered, beside Centrifugo's
groups.png      groups: p99 send→receive against the deliveries offered, ours beside Centrifugo's
"""
import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main(out: Path) -> None:
    results = json.loads((out / "results.json").read_text())
    runs = results.get("latency") or []
    if not runs:
        print("charts: no latency results, nothing to draw")
        return
    rates = [r["rate"] for r in runs]
    quantiles = [("p50_ms", "p50"), ("p99_ms", "p99"), ("p999_ms", "p99.9")]

    fig, ax = plt.subplots(figsize=(8, 4.5))
    width = 0.8 / (2 * len(quantiles))
    for qi, (key, label) in enumerate(quantiles):
        xs = [i + (2 * qi) * width for i in range(len(rates))]
        ax.bar(xs, [r["receive"][key] for r in runs], width, label=f"platform {label}")
        xs = [i + (2 * qi + 1) * width for i in range(len(rates))]
        ax.bar(xs, [r["floor"][key] for r in runs], width, label=f"Kafka floor {label}", alpha=0.6)
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(rates))])
    ax.set_xticklabels([f"{r}/s" for r in rates])
    ax.set_yscale("log")
    ax.set_ylabel("send → receive latency (ms, log scale)")
    ax.set_title("Latency at fixed rates, 1:1 conversations")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(out / "latency.png", dpi=120)

    fig, ax = plt.subplots(figsize=(8, 4.5))
    ax.plot(rates, [r["ack"]["p99_ms"] for r in runs], marker="o", label="p99 send → acknowledgement")
    ax.plot(rates, [r["receive"]["p99_ms"] for r in runs], marker="o", label="p99 send → receive")
    ax.plot(rates, [r["floor"]["p99_ms"] for r in runs], marker="o", linestyle="--", label="p99 Kafka floor")
    for peer in results.get("peers") or []:
        theirs = peer["latency"]
        ax.plot([r["rate"] for r in theirs], [r["receive"]["p99_ms"] for r in theirs], marker="s", linestyle="-.",
                label=f"p99 send → receive, {peer_label(peer)}")
    ax.axhline(100, color="grey", linewidth=0.8, linestyle=":", label="100 ms")
    ax.set_xlabel("messages per second offered")
    ax.set_ylabel("latency (ms)")
    ax.set_yscale("log")
    ax.set_title("Throughput against latency")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "throughput.png", dpi=120)
    drawn = [out / "latency.png", out / "throughput.png"]

    groups = results.get("groups") or []
    if groups:
        fig, ax = plt.subplots(figsize=(8, 4.5))
        offered = lambda rs: [r["rate"] * (r["members"] - 1) for r in rs]  # noqa: E731
        ax.plot(offered(groups), [r["receive"]["p99_ms"] for r in groups], marker="o", label="ours, persisted")
        for peer in results.get("peers") or []:
            ax.plot(offered(peer["groups"]), [r["receive"]["p99_ms"] for r in peer["groups"]], marker="s",
                    linestyle="-.", label=peer_label(peer))
        ax.axhline(100, color="grey", linewidth=0.8, linestyle=":", label="100 ms")
        ax.set_xlabel("deliveries per second offered")
        ax.set_ylabel("p99 send → receive (ms)")
        ax.set_yscale("log")
        ax.set_title(f"Groups of {groups[0]['members']}")
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out / "groups.png", dpi=120)
        drawn.append(out / "groups.png")
    print("charts: " + ", ".join(str(p) for p in drawn))


def peer_label(peer: dict) -> str:
    return f"{peer['name']} {peer['version']}, " + ("history" if peer["history"] else "no history")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "bench-results"))
