"""`lep vocab import` and `lep vocab report` through the command line."""

import json

from builders import write_corpus_slice

from lep_plugin.cli.lep import main


def test_import_by_name_and_report(tmp_path, capsys, ru_heldout, shared_data):
    main(["vocab", "import", "--source", "tokenizer.model.v1", "--output", str(tmp_path / "mistral")])
    assert (tmp_path / "mistral" / "tokenizer.json").is_file()
    ru = write_corpus_slice(ru_heldout, tmp_path / "ru.jsonl", 30)
    en = tmp_path / "en.txt"
    en.write_text("The quick brown fox jumps over the lazy dog.\n\nAnd then it sleeps.\n", encoding="utf-8")
    capsys.readouterr()
    main(
        [
            "vocab",
            "report",
            "--tokenizer",
            str(tmp_path / "mistral"),
            "--text",
            str(ru),
            "--text",
            str(en),
            "--json",
            str(tmp_path / "r.json"),
            "--plot",
            str(tmp_path / "r.png"),
        ]
    )
    table = capsys.readouterr().out
    assert table.startswith("| tokenizer | text |") and table.strip().count("\n") == 3
    rows = json.loads((tmp_path / "r.json").read_text())
    assert [r["text"] for r in rows] == [str(ru), str(en)]
    assert 2.0 < rows[0]["chars_per_token"] < 2.6  # the Mistral-7B tokenizer on Russian: about 2.3
    assert rows[1]["words"] == 13 and rows[1]["tokens_per_word"] >= 1
    assert (tmp_path / "r.png").read_bytes()[:4] == b"\x89PNG"
    # what the plot shows: one bar series (the tokenizer) with one bar per text at its chars/token
    from lep_plugin.vocab.report import TokenizationStats, report_figure

    (ax,) = report_figure([TokenizationStats(**r) for r in rows]).get_axes()
    assert ax.get_ylabel() == "characters per token"
    assert [t.get_text() for t in ax.get_xticklabels()] == [f"{tmp_path.name}/ru.jsonl", f"{tmp_path.name}/en.txt"]
    (bars,) = ax.containers
    assert bars.get_label() == "mistral"
    assert [b.get_height() for b in bars] == [r["chars_per_token"] for r in rows]
