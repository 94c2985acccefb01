"""``lep eval`` on two real tiny models (Mistral 32k and Tekken 131k tokenizers): Markdown table, JSON
and plot; bad input is one error line and a non-zero exit."""

from __future__ import annotations

import json

import pytest

from lep_plugin.cli.lep import main

FAST = ["--samples", "2", "--max-new-tokens-sentence", "8", "--max-new-tokens-paragraph", "8", "--bpc-chars", "1500",
        "--device", "cpu"]


def test_lep_eval_two_models_table_json_plot(tiny_mistral, tiny_llama, ru_heldout, shared_data, tmp_path, capsys):
    en = shared_data / "en" / "heldout.jsonl"
    out_json, out_png = tmp_path / "eval.json", tmp_path / "eval.png"
    main(["eval", str(tiny_mistral), str(tiny_llama), "--text", str(ru_heldout), "--text", str(en), *FAST,
          "--json", str(out_json), "--plot", str(out_png)])
    table = capsys.readouterr().out.strip().splitlines()
    assert table[0].startswith("| model | ru/heldout sent. copy")
    assert len(table) == 5 and table[2].startswith("| tiny-mistral |") and table[3].startswith("| tiny-llama |")
    assert table[4].startswith("| chance (another sample's text) |")
    payload = json.loads(out_json.read_text())
    rows = payload["results"]
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
        assert 0 < r["chance"]["sentence_copy"] <= 1 and r["chance"]["paragraph_copy"] == 0
    assert out_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    _check_comparison_figure(rows)


def _check_comparison_figure(records):
    """What the plot shows: a grid with a panel per metric that has anything to show, titled with which
    direction is better; one bar series per model with one bar per text at the recorded value, the value
    written on the bar; panels of metrics that are 0 for every model left out and named; one legend."""
    import math

    from lep_plugin.evaluation.evaluate import METRICS
    from lep_plugin.evaluation.report import LOWER_IS_BETTER, TITLES, comparison_figure

    fig = comparison_figure(records)
    texts = list(records[0]["texts"])
    empty = [m for m in METRICS if all(math.isnan(r["texts"][t][m]) or r["texts"][t][m] == 0 for r in records for t in texts)]
    shown = [m for m in METRICS if m not in empty]
    axes = fig.get_axes()
    assert [ax.get_title() for ax in axes] == [
        f"{TITLES[m]} ({'lower' if m in LOWER_IS_BETTER else 'higher'} is better)" for m in shown
    ]
    assert len(axes) <= 6 and fig.get_size_inches()[0] <= 14  # a grid that fits a screen, not one long row
    for ax, metric in zip(axes, shown):
        assert [t.get_text() for t in ax.get_xticklabels()] == texts
        assert len([c for c in ax.containers if c.get_label()]) == len(records)
        bars = [c for c in ax.containers if hasattr(c, "patches")]
        for container, record in zip(bars, records):
            assert container.get_label() == record["model"]
            expected = [record["texts"][t][metric] for t in texts]
            assert [bar.get_height() for bar in container] == pytest.approx([0.0 if math.isnan(v) else v for v in expected])
        written = {t.get_text() for t in ax.texts}
        assert all(f"{record['texts'][t][metric]:.3f}" in written for record in records for t in texts)
    if empty:
        assert all(TITLES[m] in fig._suptitle.get_text() for m in empty)
    (legend,) = fig.legends
    assert [t.get_text() for t in legend.get_texts()] == [r["model"] for r in records]
    return fig


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
