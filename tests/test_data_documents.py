"""Reading text into documents and work units (hand-made inputs, hand-checked outputs)."""

from __future__ import annotations

from bert_jax.data.documents import ReadStats, read_documents, split_sentences, work_units


def test_split_sentences():
    text = ('He said "Go." Then he left. It is 3 p.m. now and (Yes!) Maybe? '
            "Ok. the end")
    assert split_sentences(text) == ['He said "Go."', "Then he left.",
                                     "It is 3 p.m. now and (Yes!)", "Maybe?", "Ok. the end"]
    assert split_sentences("  ") == []


def test_formats(tmp_path):
    wiki = tmp_path / "wiki.txt"
    wiki.write_text(" \n = First = \n \n A b c . D e f . \n \n = = Part = = \n G h . \n"
                    " = = = Deeper = = = \n I j . \n = Second = \n K l . M n . \n")
    stats = ReadStats()
    assert list(read_documents([wiki], "wikitext", stats)) == [
        ["A b c .", "D e f .", "G h .", "I j ."], ["K l .", "M n ."]]
    sentences = tmp_path / "s.txt"
    sentences.write_text("One.\nTwo.\n\n\n\nThree.\n  \nFour.\nFive.\n")
    assert list(read_documents([sentences], "sentences", ReadStats())) == [
        ["One.", "Two."], ["Three."], ["Four.", "Five."]]
    docs = tmp_path / "d.txt"
    docs.write_text("One. Two.\n\nThree.\n")
    assert list(read_documents([docs], "documents", ReadStats())) == [["One.", "Two."],
                                                                      ["Three."]]
    assert stats.lines == 11 and stats.files == 1 and stats.invalid_utf8_lines == 0


def test_work_units():
    docs = [["a" * 9], ["b" * 9], ["c" * 9], ["d" * 9], ["e" * 9]]  # 10 bytes each
    stats = ReadStats()
    units = list(work_units(iter(docs), 20, stats))
    # Units close at >= 20 bytes with >= 2 documents; the one-document tail joins the last.
    assert units == [docs[0:2], docs[2:5]]
    assert stats.documents == 5 and stats.single_sentence_documents == 5
    assert list(work_units(iter(docs[:1]), 20, ReadStats())) == [docs[:1]]
    # A document larger than a unit is cut at sentence boundaries.
    long_doc = [[f"s{i:02d}" for i in range(40)], ["x"]]
    stats = ReadStats()
    units = list(work_units(iter(long_doc), 20, stats))
    parts = [d for u in units for d in u]
    assert stats.split_documents == 1 and sum(parts, []) == long_doc[0] + ["x"]
    assert all(sum(len(s) + 1 for s in d) <= 24 for d in parts)
    assert all(len(u) >= 2 for u in units)
