"""`lep vocab import` and `lep vocab report` through the command line."""

import json

from fixtures import write_corpus_slice
from lep_plugin.cli.lep import main


def test_import_by_name_and_report(tmp_path, capsys, ru_heldout, shared_data):
    main(["vocab", "import", "--source", "tokenizer.model.v1", "--output", str(tmp_path / "mistral")])
    assert (tmp_path / "mistral" / "tokenizer.json").is_file()
    ru = write_corpus_slice(ru_heldout, tmp_path / "ru.jsonl", 30)
    en = tmp_path / "en.txt"
    en.write_text("The quick brown fox jumps over the lazy dog.\n\nAnd then it sleeps.\n", encoding="utf-8")
    capsys.readouterr()
    main(["vocab", "report", "--tokenizer", str(tmp_path / "mistral"), "--text", str(ru), "--text", str(en),
          "--json", str(tmp_path / "r.json"), "--plot", str(tmp_path / "r.png")])
    table = capsys.readouterr().out
    assert table.startswith("| tokenizer | text |") and table.strip().count("\n") == 3
    rows = json.loads((tmp_path / "r.json").read_text())
    assert [r["text"] for r in rows] == [str(ru), str(en)]
    assert 2.0 < rows[0]["chars_per_token"] < 2.6  # the Mistral-7B tokenizer on Russian: about 2.3
    assert rows[1]["words"] == 13 and rows[1]["tokens_per_word"] >= 1
    assert (tmp_path / "r.png").read_bytes()[:4] == b"\x89PNG"
