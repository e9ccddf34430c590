"""The bench's front and dominance table, on hand-made rows."""

from cachekit.front import dominance, dominance_markdown, pareto

ROWS = [
    {"name": "uncached", "source": "uncached", "error": None, "compute_fraction": 1.0, "psnr": 100.0},
    {"name": "first_block threshold 0.1", "source": "cachekit", "error": None, "compute_fraction": 0.5, "psnr": 30.0},
    {"name": "first_block threshold 0.2", "source": "cachekit", "error": None, "compute_fraction": 0.4, "psnr": 25.0},
    {"name": "magcache", "source": "cachekit", "error": "boom"},
    {"name": "peer A", "source": "diffusers", "error": None, "compute_fraction": 0.5, "psnr": 29.0},
    {"name": "peer B", "source": "diffusers", "error": None, "compute_fraction": 0.45, "psnr": 26.0},
    {"name": "peer C", "source": "diffusers", "error": None, "compute_fraction": 0.3, "psnr": 20.0},
]


def test_each_peer_is_matched_with_the_best_cachekit_row_at_no_more_flops():
    table = {t["peer"]: t for t in dominance(ROWS)}
    assert table["peer A"]["by"] == "first_block threshold 0.1" and table["peer A"]["margin_db"] == 1.0
    assert table["peer B"]["by"] is None  # 0.4 has less PSNR, 0.5 more FLOPs
    assert table["peer C"]["by"] is None
    assert set(table) == {"peer A", "peer B", "peer C"}  # rows with errors and uncached are left out


def test_front_keeps_only_unbeaten_points():
    assert [r["name"] for r in pareto(ROWS)] == ["first_block threshold 0.1", "first_block threshold 0.2",
                                                 "peer B", "peer C"]


def test_a_peer_that_changed_nothing_is_marked_so():
    noop = {"name": "peer D", "source": "diffusers", "error": None, "compute_fraction": 1.0, "psnr": 100.0}
    table = {t["peer"]: t for t in dominance([*ROWS, noop])}
    assert table["peer D"]["did_nothing"] and table["peer D"]["by"] is None
    assert not table["peer A"].get("did_nothing")
    assert "did nothing on this model" in dominance_markdown([table["peer D"]], "t")


def test_each_tuned_row_is_compared_with_the_best_row_within_its_budget():
    from cachekit.front import budget_markdown, budget_table

    tuned = [{"name": "tuned budget 0.5", "source": "cachekit", "error": None, "compute_fraction": 0.5, "psnr": 32.0,
              "predicted_psnr": 31.0},
             {"name": "tuned budget 0.35", "source": "cachekit", "error": None, "compute_fraction": 0.333, "psnr": 21.5}]
    from cachekit.front import family

    assert {family(r) for r in tuned} == {"tuned"}  # one curve in the plot
    table = {t["budget"]: t for t in budget_table(ROWS + tuned)}
    assert table[0.5]["best"] == "first_block threshold 0.1" and table[0.5]["margin_db"] == 2.0  # not another tuned row
    assert table[0.35]["best"] == "peer C" and table[0.35]["margin_db"] == 1.5  # peers count too
    text = budget_markdown(list(table.values()), "t")
    assert "| 0.5 | 0.500 | 32.00 | 31.00 | first_block threshold 0.1 | 0.500 | 30.00 | +2.00 |" in text
    assert "| 0.35 | 0.333 | 21.50 | n/a | peer C | 0.300 | 20.00 | +1.50 |" in text
