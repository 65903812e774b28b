"""The latency benchmark's throughput rounds: alternation and the median of per-batch ratios."""
from agentmem.eval.latency import markdown, throughput_rounds


def test_rounds_alternate_and_report_the_median_ratio():
    calls: list[str] = []
    # seconds each call takes, in call order: batch 0 encode 1 s then store 2 s (ratio 0.5),
    # batch 1 store 1 s then encode 1 s (1.0), batch 2 encode 1 s then store 4 s (0.25)
    durations = iter([1.0, 2.0, 1.0, 1.0, 1.0, 4.0])

    def clock(step):
        step()
        return next(durations)

    batches = [["a", "b"], ["c", "d"], ["e", "f"]]
    figures = throughput_rounds(batches, lambda batch: calls.append(f"encode {batch[0]}"),
                                lambda i: calls.append(f"store {batches[i][0]}"), clock)
    assert calls == ["encode a", "store a", "store c", "encode c", "encode e", "store e"]
    assert figures["ratio_p50"] == 0.5
    assert (figures["ratio_min"], figures["ratio_max"]) == (0.25, 1.0)
    assert figures["minilm_encode"] == 2.0  # texts/s: 2 texts in 1 s each time
    assert figures["remember_many"] == 1.0  # 2 / 2, 2 / 1, 2 / 4: median 1.0
    assert (figures["batches"], figures["batch_size"]) == (3, 2)


def test_markdown_shows_the_median_ratio_and_its_range():
    size = {
        "notes_stored": 1000,
        "remember": {"baseline": {"p50_ms": 10.0, "p95_ms": 12.0}, "agentmem": {"p50_ms": 12.0, "p95_ms": 15.0}},
        "recall": {"baseline": {"p50_ms": 10.0, "p95_ms": 12.0}, "agentmem": {"p50_ms": 11.0, "p95_ms": 14.0}},
        "throughput_per_s": {"minilm_encode": 80.0, "remember_many": 70.0, "ratio_p50": 0.86,
                             "ratio_min": 0.8, "ratio_max": 0.9, "batches": 5, "batch_size": 200},
    }
    text = markdown({"stores": {"sqlite": {"sizes": {1000: size}}}}, "python -m agentmem.eval.latency")
    assert "| 70 / 80 | 0.86x (0.80-0.90, 5 x 200) |" in text
