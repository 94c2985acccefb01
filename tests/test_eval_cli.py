"""``lep eval`` on two real tiny models (Mistral 32k and Tekken 131k tokenizers): Markdown table, JSON
and plot; bad input is one error line and a non-zero exit."""

from __future__ import annotations

import json
import math

import pytest

from lep_plugin.cli.lep import main

FAST = [
    "--samples",
    "2",
    "--max-new-tokens-sentence",
    "8",
    "--max-new-tokens-paragraph",
    "8",
    "--bpc-chars",
    "1500",
    "--device",
    "cpu",
]


def test_lep_eval_two_models_table_json_plot(tiny_mistral, tiny_llama, ru_heldout, shared_data, tmp_path, capsys):
    en = shared_data / "en" / "heldout.jsonl"
    out_json, out_png = tmp_path / "eval.json", tmp_path / "eval.png"
    main(
        [
            "eval",
            str(tiny_mistral),
            str(tiny_llama),
            "--text",
            str(ru_heldout),
            "--text",
            str(en),
            *FAST,
            "--json",
            str(out_json),
            "--plot",
            str(out_png),
        ]
    )
    table = capsys.readouterr().out.strip().splitlines()
    assert table[0].startswith("| model | ru/heldout sent. strict (chance) | ru/heldout sent. exact (chance)")
    assert len(table) == 4 and table[2].startswith("| tiny-mistral |") and table[3].startswith("| tiny-llama |")
    payload = json.loads(out_json.read_text())
    rows = payload["results"]
    _check_own_chance_in_table(table, rows)
    assert [r["model"] for r in rows] == ["tiny-mistral", "tiny-llama"]
    assert rows[0]["prompt_style"] == "chat"  # the Mistral tokenizer has a chat template
    ru_m, ru_l = rows[0]["texts"]["ru/heldout"], rows[1]["texts"]["ru/heldout"]
    # the real tokenizers' statistics on Russian: Mistral ~2.3 chars/token, Tekken more compact
    assert 2.0 < ru_m["chars_per_token"] < 2.7
    assert ru_l["chars_per_token"] > ru_m["chars_per_token"]
    for r in (ru_m, ru_l):
        assert 0 <= r["sentence_copy"] <= 1 and r["bits_per_char"] > 0
        # results one can check: every sample's prompt, reference and output, and the tasks' chance level
        log = r["log"]
        assert [e["task"] for e in log] == ["sentence_copy"] * 2 + ["paragraph_copy"] * 2
        assert all(e["reference"] in e["prompt"] and isinstance(e["output"], str) for e in log)
        assert r["sentence_copy"] == pytest.approx(sum(e["score"] for e in log[:2]) / 2)
        assert r["sentence_strict"] == pytest.approx(sum(e["scores"]["sentence_strict"] for e in log[:2]) / 2)
        assert 0 < r["chance"]["sentence_copy"] <= 1 and r["chance"]["paragraph_copy"] == 0
        assert 0 < r["chance"]["sentence_strict"] < 1 and r["chance"]["sentence_exact"] == 0
    # the strict and exact chance levels depend on the texts only, Darumeru's sentence level on the tokenizer
    assert ru_m["chance"]["sentence_strict"] == ru_l["chance"]["sentence_strict"]
    assert ru_m["chance"]["sentence_copy"] != ru_l["chance"]["sentence_copy"]
    # the documented short keys: <language>_strict etc. and their chance levels
    for row in rows:
        assert row["summary"]["ru_strict"] == row["texts"]["ru/heldout"]["sentence_strict"]
        assert row["summary_chance"]["ru_strict"] == row["texts"]["ru/heldout"]["chance"]["sentence_strict"]
        assert row["summary"]["en_paragraph_copy"] == row["texts"]["en/heldout"]["paragraph_copy"]
    assert payload["settings"]["paragraph_budget"] == 1.5
    assert out_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    _check_comparison_figure(rows)


def _check_comparison_figure(records):
    """What the plot shows: a grid with a panel per metric that has anything to show, titled with which
    direction is better; one bar series per model with one bar per text at the recorded value, the value
    written on the bar; panels of metrics that are 0 for every model left out and named; one legend."""
    import math

    from lep_plugin.evaluation.evaluate import COPY_METRICS, METRICS
    from lep_plugin.evaluation.report import (
        CHANCE_LABEL,
        LOWER_IS_BETTER,
        TITLES,
        comparison_figure,
    )

    fig = comparison_figure(records)
    texts = list(records[0]["texts"])
    empty = [
        m for m in METRICS if all(math.isnan(r["texts"][t][m]) or r["texts"][t][m] == 0 for r in records for t in texts)
    ]
    shown = [m for m in METRICS if m not in empty]
    axes = fig.get_axes()
    assert [ax.get_title() for ax in axes] == [
        f"{TITLES[m]}\n({'lower' if m in LOWER_IS_BETTER else 'higher'} is better)" for m in shown
    ]
    width, height = fig.get_size_inches()
    assert width <= 14 and height <= 10  # a grid that fits a screen, not one long row
    fig.canvas.draw()  # every title whole inside the figure (a last panel's was cut at its right edge)
    for ax in axes:
        box = ax.title.get_window_extent()
        assert fig.bbox.x0 <= box.x0 and box.x1 <= fig.bbox.x1, ax.get_title()
    for ax, metric in zip(axes, shown):
        assert [t.get_text() for t in ax.get_xticklabels()] == texts
        assert len([c for c in ax.containers if c.get_label()]) == len(records)
        bars = [c for c in ax.containers if hasattr(c, "patches")]
        for container, record in zip(bars, records):
            assert container.get_label() == record["model"]
            expected = [record["texts"][t][metric] for t in texts]
            assert [bar.get_height() for bar in container] == pytest.approx(
                [0.0 if math.isnan(v) else v for v in expected]
            )
        written = {t.get_text() for t in ax.texts}
        assert all(f"{record['texts'][t][metric]:.3f}" in written for record in records for t in texts)
    if empty:
        assert all(TITLES[m] in fig._suptitle.get_text() for m in empty)
    _check_chance_lines(fig, records, shown)
    (legend,) = fig.legends
    chance = [CHANCE_LABEL] if set(shown) & set(COPY_METRICS) else []
    assert [t.get_text() for t in legend.get_texts()] == [r["model"] for r in records] + chance
    return fig


def _check_chance_lines(fig, records, shown):
    """On every copy panel each model's bar carries a dashed line at that model's own chance level, spanning
    the bar, inside the visible range (a bar below chance is drawn below the line)."""
    from matplotlib.collections import LineCollection

    from lep_plugin.evaluation.evaluate import COPY_METRICS

    texts = list(records[0]["texts"])
    for ax, metric in zip(fig.get_axes(), shown):
        lines = [c for c in ax.collections if isinstance(c, LineCollection)]
        if metric not in COPY_METRICS:
            assert not lines
            continue
        assert len(lines) == len(records)
        bars = [c for c in ax.containers if hasattr(c, "patches")]
        for line, bar_set, record in zip(lines, bars, records):
            segments = line.get_segments()
            assert [seg[0][1] for seg in segments] == pytest.approx(
                [record["texts"][t]["chance"][metric] for t in texts]
            )
            for seg, bar in zip(segments, bar_set):
                assert seg[0][0] == pytest.approx(bar.get_x()) and seg[1][0] == pytest.approx(
                    bar.get_x() + bar.get_width()
                )
            assert all(seg[0][1] < ax.get_ylim()[1] for seg in segments)


def _check_own_chance_in_table(table, records):
    """Each model's copy cells read `value (its own chance)`."""
    from lep_plugin.evaluation.evaluate import COPY_METRICS, METRICS

    def fmt(value):
        return "–" if math.isnan(value) else f"{value:.3f}"

    texts = list(records[0]["texts"])
    for line, record in zip(table[2:], records):
        cells = [c.strip() for c in line.strip("|").split("|")][1:]
        values = record["texts"]
        assert cells == [
            fmt(values[t][m]) + (f" ({fmt(values[t]['chance'][m])})" if m in COPY_METRICS else "")
            for t in texts
            for m in METRICS
        ]


def test_chance_per_model_in_table_and_plot():
    """Two models whose chance levels differ (Darumeru's sentence level counts tokens): each row and each
    bar carries its own; a bar far below its chance is drawn below the dashed line."""
    from lep_plugin.evaluation.evaluate import COPY_METRICS, METRICS
    from lep_plugin.evaluation.report import markdown_table

    def record(name, copy, chance):
        values = {m: 0.4 for m in METRICS} | {"sentence_copy": copy}
        return {
            "model": name,
            "texts": {"ru": values | {"chance": {m: 0.2 for m in COPY_METRICS} | {"sentence_copy": chance}}},
        }

    records = [record("instruct", 0.81, 0.596), record("lep", 0.12, 0.55)]
    table = markdown_table(records).splitlines()
    assert "| 0.810 (0.596) |" in table[2] and "| 0.120 (0.550) |" in table[3]
    _check_own_chance_in_table(table, records)
    fig = _check_comparison_figure(records)
    panel = fig.get_axes()[METRICS.index("sentence_copy")]
    lep_bar = next(c for c in panel.containers if c.get_label() == "lep")[0]
    assert lep_bar.get_height() < 0.55 - 0.4  # the bar ends far below the line drawn at its chance


@pytest.mark.parametrize("case", ["missing_model", "empty_text"])
def test_lep_eval_bad_input_is_one_error_line(case, tiny_mistral, ru_heldout, tmp_path, capsys):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    model = tmp_path / "no-such-model" if case == "missing_model" else tiny_mistral
    text = ru_heldout if case == "missing_model" else empty
    with pytest.raises(SystemExit) as exit_info:
        main(["eval", str(model), "--text", str(text), *FAST, "--json", str(tmp_path / "r.json")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ")
    assert ("does not exist" in err[0]) if case == "missing_model" else ("empty" in err[0])
    assert not (tmp_path / "r.json").exists()
