"""The latency benchmark's throughput rounds (alternation, the median of per-batch ratios), its cached
filler vectors, and a small run on each store."""
import os

import numpy as np
import pytest

from agentmem.encoding import embed
from agentmem.eval import latency
from agentmem.eval.latency import PrecomputedEmbedder, markdown, throughput_rounds
from tests.conftest import SHARED_DATA


def test_cached_texts_are_answered_from_the_cache_and_others_encoded(embedder):
    known = np.zeros(384, dtype=np.float32)
    known[0] = 1.0
    precomputed = PrecomputedEmbedder({"a cached filler text": known})
    np.testing.assert_array_equal(embed(precomputed, ["a cached filler text"]), known[None, :])
    np.testing.assert_array_equal(embed(precomputed, ["a cached filler text"] * 3), np.stack([known] * 3))
    np.testing.assert_array_equal(embed(precomputed, ["a cached filler text"] * 40), np.stack([known] * 40))  # in batches
    fresh = ["a text no cache holds", "another one"]
    np.testing.assert_allclose(embed(precomputed, fresh[:1]), embed(embedder, fresh[:1]), atol=1e-6)
    np.testing.assert_allclose(embed(precomputed, fresh), embed(embedder, fresh), atol=1e-6)
    mixed = embed(precomputed, ["a cached filler text", fresh[0]])  # a batch not wholly cached is encoded
    np.testing.assert_allclose(mixed, embed(embedder, ["a cached filler text", fresh[0]]), atol=1e-6)


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


def test_markdown_shows_the_median_ratio_and_its_range_and_remember_with_its_write():
    size = {
        "notes_stored": 1000,
        "remember": {"baseline": {"p50_ms": 10.0, "p95_ms": 12.0}, "agentmem": {"p50_ms": 12.0, "p95_ms": 15.0},
                     "agentmem_with_index_write": {"p50_ms": 14.0, "p95_ms": 18.0}},
        "recall": {"baseline": {"p50_ms": 10.0, "p95_ms": 12.0}, "agentmem": {"p50_ms": 11.0, "p95_ms": 14.0}},
        "throughput_per_s": {"minilm_encode": 80.0, "remember_many": 70.0, "ratio_p50": 0.86,
                             "ratio_min": 0.8, "ratio_max": 0.9, "batches": 5, "batch_size": 200},
    }
    text = markdown({"stores": {"sqlite": {"sizes": {1000: size}}}}, "python -m agentmem.eval.latency")
    assert "| 70 / 80 | 0.86x (0.80-0.90, 5 x 200) |" in text
    assert "| sqlite | 1000 | 12.0 / 15.0 | 14.0 / 18.0 | 10.0 / 12.0 | 1.40x |" in text  # the target's ratio has the write


@pytest.mark.parametrize("store", ["sqlite", "postgres"])
def test_a_run_reports_each_size_and_leaves_no_work_folder_behind(store, tmp_path, monkeypatch):
    monkeypatch.setattr(latency, "PROBES", 3)
    home = os.environ.get("AGENTMEM_HOME")
    reported: list[dict] = []
    results = latency.run(SHARED_DATA, [8], store, cache=tmp_path / "cache", report=lambda r: reported.append(r),
                          scratch=tmp_path)
    figures = results["sizes"][8]
    assert figures["notes_stored"] == 8 + 3  # the filler and the timed remembers
    assert figures["remember"]["agentmem_with_index_write"]["p50_ms"] >= figures["remember"]["agentmem"]["p50_ms"]
    assert reported and reported[-1] is results
    assert [p.name for p in tmp_path.iterdir()] == ["cache"]  # the work folder (0.5 GB at 100k notes) is gone
    assert os.environ.get("AGENTMEM_HOME") == home


def test_the_work_folder_goes_when_the_stores_fail_to_open(tmp_path, monkeypatch, embedder):
    def refused(*args, **kwargs):
        raise RuntimeError("no room")

    monkeypatch.setattr(latency, "Memory", refused)
    with pytest.raises(RuntimeError, match="no room"), latency.work_stores("sqlite", embedder, tmp_path):
        pass
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ValueError, match="no note store called 'mysql'"), latency.work_stores("mysql", embedder):
        pass
